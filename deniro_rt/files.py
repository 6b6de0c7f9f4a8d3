"""Atomic folder output, shared by every stage (export artifacts, converted checkpoints, batch results)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def publish(stage: Path, out: Path) -> None:
    """Rename the finished folder `stage` into place as `out`; an old `out` goes only after that, so a
    crash leaves either the old folder or the new one, never neither."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
