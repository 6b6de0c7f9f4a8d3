"""Atomic folder output, shared by every stage (export artifacts, converted checkpoints, batch results).

`staged(out)` gives a hidden folder beside `out` to write into; `publish` puts the finished folder in place.
On Linux an existing `out` is swapped with the new folder in one system call (renameat2 RENAME_EXCHANGE),
so a reader or a crash sees the old folder or the new one, never neither. Where that call is missing
(other systems, old kernels, file systems without it) the old folder is first renamed aside: a crash in
that moment leaves `out` absent and the old folder, complete, at `.<name>.old-<pid>` beside it.
A stage is named after its process (`.<name>.tmp-<pid>@<host>-…`): a run killed outright (SIGKILL, power loss)
leaves it behind, and the next run writing the same `out` on that host deletes it.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
RENAME_EXCHANGE = 2  # <linux/fs.h>: swap the two paths atomically; both must exist
UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where this system cannot (then nothing was changed)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def publish(stage: Path, out: Path) -> None:
    """Put the finished folder `stage` in place as `out` (see the module docstring for what a crash leaves).

    A new `out` is one rename. An existing one is swapped with `stage` and then deleted."""
    stage, out = Path(stage), Path(out)
    if not out.exists():
        os.replace(stage, out)
        return
    if exchange(stage, out):
        shutil.rmtree(stage, ignore_errors=True)  # holds the old folder now
        return
    log.debug("no atomic exchange here; renaming %s aside first", out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Ctrl-C ignored for the block: a few renames that must all happen, or none (a graph and the manifest
    holding its hash). One pressed just before is raised on entry, before any of them; in a thread other than
    the main one (where Python takes signals) this changes nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # raises a KeyboardInterrupt still pending
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_text_atomically(path: Path, text: str) -> None:
    """`text` at `path`, written aside and renamed into place: a kill mid-write leaves the previous file."""
    temp = Path(path).with_name(f".{Path(path).name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)  # one rename, over an existing file too


def stage_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def stage_owner(stage: Path, out: Path) -> tuple[int, str] | None:
    """(pid, host) of the process that made a stage beside `out`; None for names this module did not write."""
    pid, at, rest = stage.name[len(stage_prefix(out)) :].partition("@")
    host = rest.rpartition("-")[0]
    return (int(pid), host) if at and pid.isdigit() and host else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_dead_stages(out: Path) -> None:
    """Delete the stages beside `out` left by killed runs on this host (SIGKILL skips `staged`'s cleanup).
    A stage of a live process, or of another host sharing the folder, is left alone."""
    host = socket.gethostname()
    for stage in out.parent.glob(f"{glob.escape(stage_prefix(out))}*"):
        owner = stage_owner(stage, out)
        if stage.is_dir() and owner and owner[1] == host and not alive(owner[0]):
            log.warning("removing %s, the unfinished output of a killed run (pid %d)", stage, owner[0])
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `out` to write into: published as `out` when the block succeeds,
    removed when it raises (then `out` is untouched)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f"{stage_prefix(out)}{os.getpid()}@{socket.gethostname()}-", dir=out.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would follow the folder when it is renamed into place
    try:
        yield stage
        publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the failed stage, or the old folder after a swap


def resume_record(path: Path, fix: str) -> dict:
    """The JSON object a run saved for --resume (its options). A damaged file was a JSONDecodeError traceback,
    and one holding no JSON object (a list) let --resume go on with other options, unchecked."""
    from .errors import DeniroError

    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        saved = exc
    if not isinstance(saved, dict):
        why = saved if isinstance(saved, Exception) else "not a JSON object"
        raise DeniroError(f"--resume: {path} is damaged ({why}); {fix}")
    return saved


def check_output_folder(
    output: str | Path, sources: dict[str, str | None], overwrite: bool | None = None, flag: str = "--output"
) -> Path:
    """--output (or `flag`) as a Path, refused when it is a file, when it is (or holds) one of the `sources`
    (flag -> path) it would replace (`--model D --output D --overwrite` deleted the trained model it read), and,
    with `overwrite` False, when it is not empty (None: the caller decides)."""
    from .errors import DeniroError

    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise DeniroError(f"{flag} {out} exists and is a file; pass a folder")
    check_writable(out, flag=flag)
    for source_flag, source in sources.items():  # first: --overwrite would not help here, another --output would
        inside = source and Path(source).expanduser().exists() and Path(source).expanduser().resolve()
        if inside and (inside == out.resolve() or out.resolve() in inside.parents):
            raise DeniroError(
                f"{flag} {out} is or holds {source_flag} {source}, which the new output would replace; "
                f"pass another {flag}"
            )
    if overwrite is False and out.exists() and any(out.iterdir()):
        raise DeniroError(f"{flag} {out} is not empty; pass --overwrite or another {flag}")
    return out


def check_output_file(output: str | Path, sources: dict[str, str | None], flag: str = "--output") -> Path:
    """An output file as a Path, refused before any work when it is a folder, cannot be written, or lies inside
    one of the `sources` (flag -> folder it reads): `--model D --output D/config.json` replaced the model's config
    with the results. A new file there is refused too, or a second run with the same path would be."""
    from .errors import DeniroError

    out = Path(output).expanduser()
    if out.is_dir():
        raise DeniroError(f"{flag} {out} is a folder; pass a path for the JSON file")
    check_writable(out, out.parent, flag)
    for source_flag, source in sources.items():
        folder = source and Path(source).expanduser()
        if folder and folder.exists() and folder.resolve() in out.resolve().parents:
            raise DeniroError(
                f"{flag} {out} is inside {source_flag} {source}, whose files it could replace; pass a path outside it"
            )
    return out


def check_writable(out: Path, folder: Path | None = None, flag: str = "--output") -> None:
    """Refuse an --output that cannot be made: below a file, or in a folder this user cannot write (or a
    read-only file system). Found before any work: it was an OSError traceback when the output was created,
    after minutes of training or export. folder: the folder the output is written in (default: `out`, an
    output folder; an output file's is its parent)."""
    from .errors import DeniroError

    folder = (out if folder is None else folder).absolute()
    nearest = next(p for p in (folder, *folder.parents) if p.exists())
    if not nearest.is_dir():
        raise DeniroError(f"{flag} {out}: {nearest} is a file, not a folder; pass another {flag}")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise DeniroError(
            f"{flag} {out}: {nearest} is not writable (permissions, or a read-only file system); "
            "pass a folder you can write to"
        )
