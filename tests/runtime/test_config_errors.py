"""A bad config key is one exact line: from a flag (the locked ConfigDict's error, read
back into dotted names) or set in an experiment file before it locked its config."""

import pytest

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli


def _error_of(action):
    config = config_lib.base_config()
    config.lock()
    try:
        action(config)
    except (AttributeError, KeyError) as e:
        return e
    raise AssertionError("no error")


@pytest.mark.parametrize(
    "flag, action, line",
    [
        (
            "--config.train.num_step=3",
            lambda c: setattr(c.train, "num_step", 3),
            "unknown config key 'train.num_step'; did you mean 'train.num_steps'?",
        ),
        (
            "--config.trian.num_steps=3",
            lambda c: c.trian,
            "unknown config key 'trian.num_steps'; did you mean 'train.num_steps'?",
        ),
        (
            "--config.train.zzzzqq=3",
            lambda c: setattr(c.train, "zzzzqq", 3),
            "unknown config key 'train.zzzzqq'; see the config file for valid keys.",
        ),
    ],
)
def test_an_unknown_flag_key_is_one_exact_line(flag, action, line):
    error = _error_of(action)
    assert cli._unknown_override(["main", "--config=x.py", flag], error) == line


def test_a_key_set_in_a_config_file_must_be_declared():
    config = config_lib.base_config()
    config.model.hidden_sise = 128  # Before the file locks its config: accepted there.
    with pytest.raises(UserError) as info:
        config_lib.check_declared(config, "experiments/mine.py")
    assert str(info.value) == (
        "unknown config key 'model.hidden_sise' set in experiments/mine.py; did you mean "
        "'model.hidden_size'?"
    )
    config_lib.check_declared(config_lib.base_config(), "experiments/mine.py")  # Fine.
