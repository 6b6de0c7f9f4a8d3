"""deniro_rt.files: a published folder replaces the old one without a moment where neither is there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deniro_rt import files

REPO = Path(__file__).resolve().parents[1]


def make(folder: Path, version: str) -> Path:
    folder.mkdir()
    for name in ("model.onnx", "deniro.json"):
        (folder / name).write_text(f"{version} {name}")
    return folder


def version_of(folder: Path) -> str:
    """The version every file of `folder` says, or fails if the folder is missing or mixed."""
    versions = {(folder / name).read_text().split()[0] for name in ("model.onnx", "deniro.json")}
    assert len(versions) == 1, f"{folder} mixes versions {versions}"
    return versions.pop()


def test_publish_to_a_new_path(tmp_path):
    files.publish(make(tmp_path / "stage", "new"), tmp_path / "out")
    assert version_of(tmp_path / "out") == "new" and os.listdir(tmp_path) == ["out"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_an_existing_folder_is_swapped_in_one_step(tmp_path, monkeypatch):
    """Every file-system step publish takes is followed by a check that `out` is complete: the old
    rename-aside-then-rename-in left `out` missing after its first step."""
    out = make(tmp_path / "out", "old")
    stage = make(tmp_path / "stage", "new")
    seen = []

    def checked(step):
        def run(*args, **kwargs):
            result = step(*args, **kwargs)
            seen.append(version_of(out))  # raises if out is missing in between
            return result

        return run

    for name, step in (("exchange", files.exchange), ("rmtree", files.shutil.rmtree)):
        monkeypatch.setattr(files if name == "exchange" else files.shutil, name, checked(step))
    monkeypatch.setattr(files.os, "replace", checked(os.replace))
    files.publish(stage, out)
    assert seen == ["new", "new"] and version_of(out) == "new" and os.listdir(tmp_path) == ["out"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_crash_after_the_swap_leaves_the_new_folder(tmp_path, monkeypatch):
    out = make(tmp_path / "out", "old")
    stage = make(tmp_path / "stage", "new")
    monkeypatch.setattr(files.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        files.publish(stage, out)
    assert version_of(out) == "new" and version_of(stage) == "old"  # the old one only awaited deletion


def test_without_exchange_a_crash_between_renames_keeps_the_old_folder_beside(tmp_path, monkeypatch):
    """The fallback (no renameat2): what the docstring promises for a crash between its two renames."""
    out = make(tmp_path / "out", "old")
    stage = make(tmp_path / "stage", "new")
    monkeypatch.setattr(files, "exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        files.publish(stage, out)
    assert not out.exists() and version_of(tmp_path / f".out.old-{os.getpid()}") == "old"
    assert version_of(stage) == "new"


def test_without_exchange_the_fallback_still_publishes(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "exchange", lambda a, b: False)
    out = make(tmp_path / "out", "old")
    files.publish(make(tmp_path / "stage", "new"), out)
    assert version_of(out) == "new" and os.listdir(tmp_path) == ["out"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_errors_name_both_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        files.exchange(tmp_path / "a", tmp_path / "b")
    assert str(tmp_path / "a") in str(info.value) and str(tmp_path / "b") in str(info.value)


def test_staged_publishes_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = make(tmp_path / "out", "old")
    with pytest.raises(RuntimeError, match="export failed"):
        with files.staged(out) as stage:
            (stage / "model.onnx").write_text("half")
            raise RuntimeError("export failed")
    assert version_of(out) == "old" and os.listdir(tmp_path) == ["out"]
    with files.staged(out) as stage:
        make(stage / "inner", "x")
        for name in ("model.onnx", "deniro.json"):
            (stage / name).write_text(f"new {name}")
    assert version_of(out) == "new" and os.listdir(tmp_path) == ["out"] and (out / "inner").is_dir()
    assert (out.stat().st_mode & 0o777) == 0o755


def test_staged_removes_the_stage_of_a_killed_run_only(tmp_path):
    """SIGKILL skips staged's cleanup; the next run beside the same output deletes that stage, and only that."""
    out = tmp_path / "out"
    code = (
        "import os, signal, sys; from deniro_rt import files\n"
        f"with files.staged({str(out)!r}) as stage:\n"
        "    (stage / 'model.onnx').write_text('half'); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False)
    assert killed.returncode == -signal.SIGKILL
    (dead,) = tmp_path.glob(".out.tmp-*")
    live = make(tmp_path / f".out.tmp-{os.getpid()}@{socket.gethostname()}-abc", "running")  # this process: alive
    dead_pid = files.stage_owner(dead, out)[0]
    elsewhere = make(tmp_path / f".out.tmp-{dead_pid}@other-host-abc", "remote")  # the dead pid, another host
    foreign = make(tmp_path / ".out.tmp-xyz", "not ours")  # a name this module does not write
    with files.staged(out) as stage:
        (stage / "deniro.json").write_text("{}")
    assert not dead.exists() and live.is_dir() and elsewhere.is_dir() and foreign.is_dir()
    assert (out / "deniro.json").is_file()


def test_an_output_that_cannot_be_made_is_refused_before_any_work(tmp_path, monkeypatch):
    """It was an OSError traceback when the output was created: after the training or the export."""
    from deniro_rt import DeniroError

    file = tmp_path / "notes.txt"
    file.write_text("keep")
    with pytest.raises(DeniroError) as caught:
        files.check_output_folder(file / "sub" / "out", {})
    assert (
        str(caught.value) == f"--output {file / 'sub' / 'out'}: {file} is a file, not a folder; pass another --output"
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))  # as root
    with pytest.raises(DeniroError) as caught:
        files.check_output_folder(locked / "new" / "out", {})
    assert str(caught.value) == (
        f"--output {locked / 'new' / 'out'}: {locked} is not writable (permissions, or a read-only file system); "
        "pass a folder you can write to"
    )
    assert files.check_output_folder(tmp_path / "new" / "out", {}) == tmp_path / "new" / "out"
    assert file.read_text() == "keep" and list(locked.iterdir()) == [] and not (tmp_path / "new").exists()
