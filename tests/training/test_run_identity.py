"""One run per workdir, whatever happens (issue 28): a resume is checked against the
config and data the run started with; a checkpoint that does not fit the config is a
config error, never corruption; the best checkpoint stands on its own; --restart is a
journal a rerun finishes; metrics.jsonl heals and never blocks."""

import json
import shutil

import jax
import pytest
from conftest import main_command, subprocess_env, tiny_config

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir
from charrnn_jax.training import identity, loop, run_outputs

STEPS_6 = {"train.num_steps": 6}  # Rows at 2, 4, 6; checkpoints at 3 and 6; val at 3, 6.


def _train(workdir, allow=(), **overrides):
    return loop.train_and_evaluate(
        tiny_config(**overrides), workdir, devices=jax.devices()[:1], allow_config_change=allow
    )


def _snapshot(workdir) -> dict:
    """Every file's bytes, so a refused resume can be shown to have touched nothing."""
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and p.name != "trainer.lock"
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    _train(workdir, **STEPS_6)
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    return workdir


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.learning_rate", 0.01),
        ("train.batch_size", 16),
        ("data.seq_len", 24),
        ("seed", 3),
        ("model.dtype", "bfloat16"),
        ("data.mode", "stream"),
        ("model.cell", "lstm"),
    ],
)
def test_a_changed_hyperparameter_is_refused_naming_both_values(run_copy, key, value):
    before = _snapshot(run_copy)
    old = identity.changed_keys(tiny_config(), tiny_config(**{key: value}))[key][0]
    with pytest.raises(UserError, match=rf"{key}: {old!r} -> {value!r}"):
        _train(run_copy, **STEPS_6, **{key: value})
    assert _snapshot(run_copy) == before  # Nothing moved, nothing rewritten.


def test_safe_and_allowed_changes_pass_and_are_recorded(run_copy):
    _train(run_copy, **{"train.num_steps": 8})
    _train(
        run_copy,
        allow={"train.learning_rate"},
        **{"train.num_steps": 10},
        **{"train.learning_rate": 0.004},
    )
    lines = (run_copy / identity.HISTORY_FILE).read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["step"] for h in history] == [0, 6, 8]
    assert history[1]["changes"] == {"train.num_steps": [6, 8]}
    assert history[2]["changes"]["train.learning_rate"][1] == 0.004
    assert json.loads((run_copy / "config.json").read_text())["train"]["learning_rate"] == 0.004


def test_how_the_same_model_is_computed_may_change_on_resume(run_copy):
    """gru_impl, stack, scan and unroll choose a program, not a function ('auto' picks
    them per backend): a resume may change them, and the change is recorded."""
    program = {
        "model.gru_impl": "flax",
        "model.stack": "wavefront",
        "model.unroll": 2,
        "model.scan": "parallel",
    }
    before = metric_logging.read_jsonl(run_copy / "metrics.jsonl")
    summary = _train(run_copy, **{"train.num_steps": 8}, **program)
    assert summary["resumed_from"] == 6
    history = [json.loads(line) for line in (run_copy / identity.HISTORY_FILE).open()]
    assert history[-1]["changes"] == {
        "model.gru_impl": ["auto", "flax"],
        "model.scan": ["auto", "parallel"],
        "model.stack": ["auto", "wavefront"],
        "model.unroll": [1, 2],
        "train.num_steps": [6, 8],
    }
    rows = metric_logging.read_jsonl(run_copy / "metrics.jsonl")
    assert rows[: len(before)] == before and rows[-1]["step"] == 8


def test_a_changed_corpus_is_refused(tmp_path, shakespeare_path):
    corpus = tmp_path / "corpus.txt"
    shutil.copy(shakespeare_path, corpus)
    _train(tmp_path / "run", **STEPS_6, **{"data.path": str(corpus)})
    with open(corpus, "ab") as f:
        f.write(b"More lines, appended between runs.\n")
    with pytest.raises(UserError, match="corpus changed"):
        _train(tmp_path / "run", **{"train.num_steps": 8, "data.path": str(corpus)})
    summary = _train(
        tmp_path / "run", allow={"data"}, **{"train.num_steps": 8, "data.path": str(corpus)}
    )
    assert summary["resumed_from"] == 6


def test_a_stream_checkpoint_under_random_mode_is_a_config_error_not_corruption(tmp_path):
    workdir = tmp_path / "run"
    _train(workdir, **STEPS_6, **{"data.mode": "stream"})
    with pytest.raises(UserError, match="does not match the config.*carry"):
        _train(workdir, allow={"data.mode"}, **{"train.num_steps": 8, "data.mode": "random"})
    assert not (workdir / "checkpoints_unreadable").exists()
    assert _train(workdir, **{"train.num_steps": 8, "data.mode": "stream"})["resumed_from"] == 6


def test_the_best_checkpoint_keeps_its_val_loss_without_metrics_jsonl(run_copy):
    best_val, best_step = min(
        (r["val_loss"], r["step"])
        for r in metric_logging.read_jsonl(run_copy / "metrics.jsonl")
        if r["val_loss"] is not None
    )
    (run_copy / "metrics.jsonl").unlink()
    config = config_lib.resolve(tiny_config(**STEPS_6))  # Below the door: the typed config.
    run = run_outputs.Run(config, run_copy, is_main=True).open(restart=False)
    try:
        run.start_logs(6)
        assert run.best == (pytest.approx(best_val), best_step)
        run.keep_if_best(9, None, best_val + 0.5)  # Worse: must not replace it (no save).
        assert run.best_ckpt.all_steps() == [best_step]
    finally:
        run.close()


def test_only_best_checkpoints_left_never_start_from_zero(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    with pytest.raises(UserError, match="holds checkpoints"):
        _train(run_copy, **STEPS_6)
    assert (run_copy / "checkpoints_best").is_dir()


def test_an_interrupted_restart_is_refused_then_finished(run_copy, monkeypatch):
    before = _snapshot(run_copy)
    moved = []

    def rename_then_die(self, target):
        if len(moved) == 3:
            raise KeyboardInterrupt  # Killed between two moves.
        moved.append(self)
        return real_rename(self, target)

    path_type = type(Workdir(run_copy).path)
    real_rename = path_type.rename
    monkeypatch.setattr(path_type, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        Workdir(run_copy).set_aside("--restart")
    monkeypatch.undo()
    with pytest.raises(UserError, match="--restart of .* was interrupted"):
        _train(run_copy, **STEPS_6)
    summary = loop.train_and_evaluate(
        tiny_config(**STEPS_6), run_copy, devices=jax.devices()[:1], restart=True
    )
    assert summary["resumed_from"] is None
    (replaced,) = run_copy.glob("replaced-*")
    assert not replaced.name.endswith(".partial")
    assert _snapshot(replaced) == before  # The whole old run, moved intact.


def test_a_cut_row_at_the_restored_step_is_rewritten_exactly(trained, run_copy):
    metrics = run_copy / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 40])  # The row at step 6, cut mid-line.
    _train(run_copy, **STEPS_6)  # Nothing to train: the resume heals the file.
    assert metric_logging.read_jsonl(metrics) == metric_logging.read_jsonl(
        trained / "metrics.jsonl"
    )


def test_damaged_lines_are_set_aside_and_every_good_row_kept(trained, run_copy):
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{not json", "[1, 2]", *lines[2:]]) + "\n")
    _train(run_copy, **{"train.num_steps": 8})
    steps = [r["step"] for r in metric_logging.read_jsonl(metrics)]
    assert steps == [4, 6, 8]  # The damaged rows at 2 and 3 are gone; nothing else is.
    (aside,) = run_copy.glob("metrics.jsonl.damaged-*")
    assert aside.read_text().startswith("{not json")


def test_invalid_config_json_and_bad_flags_are_one_line(run_copy):
    import subprocess
    import sys

    (run_copy / "config.json").write_text("{not json")
    for command in ("sample", "evaluate", "classify"):
        args = [sys.executable, "-m", f"charrnn_jax.{command}", f"--workdir={run_copy}"]
        if command == "classify":
            args.append("--text=x")
        result = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True)
        assert result.returncode == 1, (command, result.stderr[-500:])
        assert "error:" in result.stderr and "Traceback" not in result.stderr, command
    bad = subprocess.run(
        [sys.executable, "-m", "charrnn_jax.evaluate", f"--workdir={run_copy}", "--streams=-1"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "--streams" in bad.stderr


def test_a_refused_resume_from_the_command_line_is_one_error_line(trained, tmp_path):
    import subprocess

    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    result = subprocess.run(
        main_command(workdir, "--nohuge_pages", **{"train.learning_rate": 0.02}),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert "train.learning_rate" in errors[0] and "Traceback" not in result.stderr


def test_a_workdir_with_no_step_accepts_the_corrected_command(tmp_path, caplog):
    """A start that failed before its first step (here: its leftovers, config.json,
    data.json and an empty metrics.jsonl) is not a run: the corrected command starts it
    anew with one line saying so, instead of refusing "another config"."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    failed = tiny_config(**{"train.learning_rate": 0.5})
    identity.record_start(failed, workdir, step=0, changes=None)
    (workdir / "metrics.jsonl").write_text("")
    summary = _train(workdir, **STEPS_6)
    assert summary["resumed_from"] is None and summary["final_step"] == 6
    assert "holds no step yet" in caplog.text
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["train"]["learning_rate"] == tiny_config().train.learning_rate


def _small_corpus_run(tmp_path, shakespeare_path):
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_bytes(shakespeare_path.read_bytes()[:200_000])
    _train(tmp_path / "run", **STEPS_6, **{"data.path": str(corpus)})
    return corpus


def test_a_moved_corpus_is_accepted_and_recorded(tmp_path, shakespeare_path):
    corpus = _small_corpus_run(tmp_path, shakespeare_path)
    moved = tmp_path / "elsewhere.txt"
    corpus.rename(moved)
    summary = _train(tmp_path / "run", **{"train.num_steps": 8, "data.path": str(moved)})
    assert summary["resumed_from"] == 6
    assert list(json.loads((tmp_path / "run" / "data.json").read_text())) == [str(moved)]
    history = (tmp_path / "run" / "config_history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["changes"]["data"] == [[str(corpus)], [str(moved)]]


def test_a_missing_corpus_is_named_missing(tmp_path, shakespeare_path):
    corpus = _small_corpus_run(tmp_path, shakespeare_path)
    corpus.unlink()
    with pytest.raises(UserError, match=r"is missing: .*corpus.txt does not exist"):
        _train(tmp_path / "run", **{"train.num_steps": 8, "data.path": str(corpus)})


def test_an_allowed_corpus_change_is_recorded_once(tmp_path, shakespeare_path):
    corpus = _small_corpus_run(tmp_path, shakespeare_path)
    with open(corpus, "ab") as f:
        f.write(b"More lines.\n")
    keys = {"data.path": str(corpus)}
    with pytest.raises(UserError, match="differ in size"):
        _train(tmp_path / "run", **{"train.num_steps": 8, **keys})
    _train(tmp_path / "run", allow={"data"}, **{"train.num_steps": 8, **keys})
    assert _train(tmp_path / "run", **{"train.num_steps": 10, **keys})["resumed_from"] == 8


def test_evaluate_refuses_a_split_of_a_changed_corpus_unless_allowed(tmp_path, shakespeare_path):
    corpus = _small_corpus_run(tmp_path, shakespeare_path)
    config = tiny_config(**{"data.path": str(corpus)})
    assert identity.check_corpus_for_scoring(config, tmp_path / "run", allow_changed=False) is None
    corpus.write_bytes(corpus.read_bytes()[::-1])  # Same size, other bytes.
    with pytest.raises(UserError, match="in content .*--allow_changed_data"):
        identity.check_corpus_for_scoring(config, tmp_path / "run", allow_changed=False)
    note = identity.check_corpus_for_scoring(config, tmp_path / "run", allow_changed=True)
    assert note.startswith("note: The corpus changed") and "Scored anyway" in note


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_lost_config_json_is_checked_against_the_checkpoint_and_rebuilt(run_copy, damage):
    """config.json deleted (or cut to 0 bytes by a kill mid-write), then a resume with
    another learning rate: refused against the record in the checkpoint, not accepted
    as `changes {}`; the run's own command resumes and rebuilds the file."""
    config_file = run_copy / "config.json"
    config_file.unlink() if damage == "delete" else config_file.write_text("")
    with pytest.raises(UserError, match=r"train.learning_rate: .* -> 0.5"):
        _train(run_copy, **{"train.num_steps": 8, "train.learning_rate": 0.5})
    summary = _train(run_copy, **{"train.num_steps": 8})
    assert summary["resumed_from"] == 6
    assert json.loads(config_file.read_text())["train"]["num_steps"] == 8
    history = [json.loads(line) for line in (run_copy / "config_history.jsonl").open()]
    assert history[-1]["jax"] == jax.__version__ and history[-1]["devices"] >= 1


def test_a_lost_data_json_is_checked_against_the_checkpoint(tmp_path, shakespeare_path):
    corpus = _small_corpus_run(tmp_path, shakespeare_path)
    record = (tmp_path / "run" / "data.json").read_text()
    (tmp_path / "run" / "data.json").unlink()
    with open(corpus, "ab") as f:
        f.write(b"Changed after data.json was lost.\n")
    with pytest.raises(UserError, match="corpus changed"):
        _train(tmp_path / "run", **{"train.num_steps": 8, "data.path": str(corpus)})
    corpus.write_bytes(corpus.read_bytes()[: -len(b"Changed after data.json was lost.\n")])
    (tmp_path / "run" / "data.json").write_text("{damaged")
    assert (
        _train(tmp_path / "run", **{"train.num_steps": 8, "data.path": str(corpus)})["resumed_from"]
        == 6
    )
    assert json.loads((tmp_path / "run" / "data.json").read_text()) == json.loads(record)
