"""A command line whose import of one module waits for Ctrl-C, as a slow import of torch or transformers does
(seconds; more from a cold disk): for tests of Ctrl-C while a CLI starts.

    python tests/helpers/slow_import.py READY_FILE MODULE ENTRY [ARGS...]
    e.g.  ... /tmp/importing train.loop train.__main__:run --preset tiny ...

Touches READY_FILE when MODULE is about to be imported, then sleeps until a signal ends the wait; exits with
ENTRY(ARGS)'s result.
"""

from __future__ import annotations

import importlib
import importlib.abc
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


class SlowImport(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, ready: Path):
        self.module, self.ready = module, ready

    def find_spec(self, name, path, target=None):
        if name == self.module:
            self.ready.touch()
            time.sleep(120)  # Ctrl-C: a KeyboardInterrupt from the import statement
        return None  # the usual finders import it


if __name__ == "__main__":
    # Ctrl-C as from a terminal: under a test run started as a background job (`pytest ... &`) SIGINT arrives
    # ignored, Python then installs no handler, and the signal did nothing (the test waited, then timed out)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ready, module, entry, *args = sys.argv[1:]
    sys.meta_path.insert(0, SlowImport(module, Path(ready)))
    module_name, function = entry.split(":")
    sys.exit(getattr(importlib.import_module(module_name), function)(args))
