"""`profile.steps`: a jax.profiler trace of the chosen steps, written into the workdir,
without changing the run (its rows equal an unprofiled run's)."""

import jax
import pytest
from conftest import tiny_config

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop, profiling


def test_the_profiled_steps_leave_a_trace_and_the_same_rows(tmp_path):
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    loop.train_and_evaluate(tiny_config(), plain, devices=jax.devices()[:1])
    loop.train_and_evaluate(
        tiny_config(**{"profile.steps": "2:2"}), profiled, devices=jax.devices()[:1]
    )
    traces = list((profiled / "profile").rglob("*.xplane.pb"))
    perfetto = list((profiled / "profile").rglob("*.trace.json.gz"))
    assert traces and perfetto
    keep = [k for k in metric_logging.FIELDS if k not in ("wall_time", "tokens_per_sec")]

    def rows(workdir):
        return [
            {k: r[k] for k in keep} for r in metric_logging.read_jsonl(workdir / "metrics.jsonl")
        ]

    assert rows(profiled) == rows(plain)


@pytest.mark.parametrize("spec", ["5", "a:2", "3:0", "-1:2"])
def test_a_bad_spec_is_one_line(spec):
    with pytest.raises(UserError, match="profile.steps must be"):
        config_lib.resolve(tiny_config(**{"profile.steps": spec}))
    with pytest.raises(ValueError):
        profiling.parse_steps(spec)
