"""Config checks, the base config, dotted overrides and sweep helpers."""

import pytest
from conftest import load_experiment, tiny_config

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError


def test_base_config_is_valid_once_a_corpus_is_named():
    config = config_lib.base_config()
    with pytest.raises(UserError, match="Set data.name"):
        config_lib.resolve(config)
    config.data.name = "tinyshakespeare"
    config_lib.resolve(config)
    assert config.sample.prompt == ""  # Suits any corpus: samples start at a line.
    assert config.eval.mode == "full" and config.data.test_fraction == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.test_fraction": 0.95}, "test_fraction must be in"),
        ({"eval.mode": "sometimes"}, "eval.mode must be one of"),
        ({"eval.streams": -1}, "eval.streams must be >= 0"),
        ({"train.early_stop_patience": -1}, "early_stop_patience must be >= 0"),
        ({"train.schedule": "linear"}, "train.schedule must be one of"),
        ({"model.num_classes": 1}, "num_classes must be 0"),
        ({"model.num_classes": 2}, "Classifiers .* need data.mode='labelled'"),
    ],
)
def test_each_bad_value_is_one_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        config_lib.resolve(tiny_config(**overrides))


def test_overrides_keep_the_config_locked_and_name_bad_keys():
    config = config_lib.with_overrides(tiny_config(), {"train.learning_rate": 0.5})
    assert config.train.learning_rate == 0.5
    with pytest.raises(UserError, match="Bad sweep override train.nope"):
        config_lib.with_overrides(config, {"train.nope": 1})
    flat = config_lib.flatten(config)
    assert flat["train.learning_rate"] == 0.5 and "data.mode" in flat


def test_config_round_trips_through_config_json(tmp_path):
    config = tiny_config()
    (tmp_path / "config.json").write_text(config_lib.to_json(config))
    assert config_lib.load(tmp_path / "config.json").to_dict() == config.to_dict()
    with pytest.raises(UserError, match="No config.json"):
        config_lib.load(tmp_path / "missing" / "config.json")


def test_a_prompt_written_for_one_corpus_is_not_logged_on_another(tmp_path):
    """The Shakespeare config's 'ROMEO:' is for tinyshakespeare: a run on a file of its
    own (or on another named corpus) logs samples from a newline instead."""
    own = tmp_path / "novel.txt"
    own.write_text("It was a dark and stormy night. " * 40)
    shakespeare = load_experiment("shakespeare", "tiny")
    assert config_lib.resolve(shakespeare).logged_prompt == "ROMEO:"
    for key, value in (("data.path", str(own)), ("data.name", "dinos")):
        other = config_lib.resolve(config_lib.with_overrides(shakespeare, {key: value}))
        assert other.logged_prompt == "", key
    anywhere = {"data.path": str(own), "sample.prompt_corpus": ""}
    assert config_lib.resolve(config_lib.with_overrides(shakespeare, anywhere)).logged_prompt == (
        "ROMEO:"
    )
