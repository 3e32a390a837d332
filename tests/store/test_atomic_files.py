"""Run files are written whole (a temp file, fsync, rename), appends start on a fresh
line after a cut one, so a kill mid-write never leaves a file that refuses the rerun;
and the workdir lock is on the directory, so deleting trainer.lock cannot break it."""

import json

import pytest
from conftest import tiny_config

from charrnn_jax.errors import UserError
from charrnn_jax.store import workdir as workdir_lib
from charrnn_jax.training import identity


def test_write_atomic_replaces_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    workdir_lib.write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workdir_lib.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        workdir_lib.write_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_the_config_history_starts_on_a_fresh_line_after_a_cut_one(tmp_path):
    config = tiny_config()
    history = tmp_path / identity.HISTORY_FILE
    history.write_text('{"time": "2026-01-01", "step": 0, "chan')  # Killed mid-append.
    identity.record_start(config, tmp_path, step=0, changes=None)
    lines = history.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["step"] == 0
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == config.seed


def test_deleting_trainer_lock_does_not_let_a_second_trainer_in(tmp_path):
    workdir = workdir_lib.Workdir(tmp_path)
    workdir.prepare()
    first = workdir_lib.WorkdirLock(workdir).acquire()
    workdir.lock_file.unlink()  # A cleanup script, a user tidying up.
    with pytest.raises(UserError, match="in use by another trainer"):
        workdir_lib.WorkdirLock(workdir).acquire()
    first.release()
    workdir_lib.WorkdirLock(workdir).acquire().release()  # Free again once released.


def test_a_dangling_symlink_workdir_is_named_as_such(tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="symbolic link to .*gone, which does not exist"):
        workdir_lib.Workdir(link).prepare()
