"""What every `python -m` entry point of the project shares: logging set-up and the error contract
(a DeniroError becomes one `error: ...` line on stderr and exit code 2, never a traceback)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import fields

from .errors import EXIT_USAGE, DeniroError

CHATTY = ("datasets", "transformers", "accelerate", "httpx", "huggingface_hub", "optimum", "fsspec")


def setup_logging(level: int = logging.INFO, ours: tuple[str, ...] = (), quiet: int = logging.WARNING) -> None:
    """Plain-message logging at `level` (`ours` at INFO); libraries' chatter only from `quiet` up."""
    logging.basicConfig(level=level, format="%(message)s")
    for name in ours:
        logging.getLogger(name).setLevel(logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(quiet)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def run_main(
    call: Callable[[], object],
    exit_codes: dict[type, int] | None = None,
    interrupted: str | Callable[[], str] | None = None,
) -> int:
    """Run a stage: its int result is the exit code (anything else: 0); errors of the types in
    `exit_codes` (checked first) or DeniroError become one line and their code. With `interrupted` (a line,
    or a function giving it), Ctrl-C prints that line instead of a traceback and exits 130."""
    codes = {**(exit_codes or {}), DeniroError: EXIT_USAGE}
    try:
        result = call()
        return result if isinstance(result, int) else 0
    except tuple(codes) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return next(code for kind, code in codes.items() if isinstance(exc, kind))
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted() if callable(interrupted) else interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


def config_parser(
    defaults: object,
    prog: str,
    description: str,
    help: dict[str, str],
    types: dict[str, type] | None = None,
    choices: dict[str, tuple] | None = None,
    required: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """One --flag per field of a dataclass config, `defaults` an instance of it: a bool is a store_true switch,
    anything else takes its default's type (`types` for fields whose default is None) and its help text, which
    gets "(default: ...)" unless it states one ("(default: x)", "Default: on CPU ...": a second, raw
    "(default: None)" after those misled), the field is `required` (fields without a default) or its text says
    "(required)" (a field checked by the stage itself: "(required) (default: None)" contradicted itself)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in fields(defaults):
        default, text, flag = getattr(defaults, f.name), help[f.name], "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=text)
            continue
        stated = "default:" in text.lower() or "(required)" in text or f.name in required
        note = "" if stated else f" (default: {default})"
        kind = (types or {}).get(f.name) or type(default)
        parser.add_argument(
            flag,
            type=kind,
            default=default,
            choices=(choices or {}).get(f.name),
            help=text + note,
            required=f.name in required,
        )
    return parser


def check_least(config: object, least: dict[str, float], above_zero: tuple[str, ...] = ()) -> None:
    """A numeric knob below its least value (or not above 0, for `above_zero`) fails before any work, naming the
    flag: not after minutes, or as a confusing error from deep inside a run. None, where allowed, is a default.
    nan and inf are refused too: `--weight-decay nan` was a traceback from the optimizer, and `--lr inf` trained
    to a nan model and saved it."""
    for name in (*least, *above_zero):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise DeniroError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name, floor in least.items():
        value = getattr(config, name)
        if value is not None and value < floor:
            raise DeniroError(f"--{name.replace('_', '-')} must be at least {floor}, got {value}")
    for name in above_zero:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise DeniroError(f"--{name.replace('_', '-')} must be above 0, got {value}")
