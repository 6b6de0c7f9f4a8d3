"""python -m deniro_rt: fill [MASK] in texts from the command line (or stdin, one text per line).

Examples:
  python -m deniro_rt "This is a great [MASK]!"
  python -m deniro_rt "The acting was [MASK]." --top-k 3 --json
  cat sentences.txt | python -m deniro_rt --model exports/deniro --device cuda

Subcommands (see `python -m deniro_rt serve --help`, `... batch --help`):
  serve   fill-mask over HTTP with dynamic batching (extra deniro[serve])
  batch   fill a parquet/text column of a corpus: in-process (extra deniro[batch]),
          or on Ray Data with --ray (extra deniro[ray])
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .cli import run_main, setup_logging
from .errors import EXIT_USAGE, DeniroError, TextError
from .providers import DEVICES, PRECISION_HELP, RUNTIME_PRECISIONS

SUBCOMMANDS = {"serve": "deniro_rt.serve.__main__", "batch": "deniro_rt.batch.cli"}  # imported only when used


def run_subcommand(name: str, argv: list[str]) -> int:
    """`serve` / `batch`: their modules (and their extras) are imported only here. A text is never
    mistaken for one: texts need a [MASK]."""
    import importlib

    module = importlib.import_module(SUBCOMMANDS[name])  # a missing extra is its own one-line error
    entry = getattr(module, "run", None) or module.main
    return entry(argv)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deniro_rt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="*", help="texts with [MASK]; none: read lines from stdin")
    parser.add_argument("--top-k", type=int, default=5, help="predictions per mask (default: 5)")
    parser.add_argument(
        "--targets", default=None, help="comma-separated words to rank instead of the whole vocabulary (default: none)"
    )
    parser.add_argument(
        "--model", default=None, help="export folder from `python -m export --onnx` (default: the shipped IMDB model)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="auto: CUDA when onnxruntime-gpu sees a GPU and starts on it, else CPU (default: auto)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=RUNTIME_PRECISIONS,
        help=PRECISION_HELP,
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    parser.add_argument("--joint", action="store_true", help="fill all masks of a text together (greedy)")
    parser.add_argument(
        "--truncation", action="store_true", help="keep a window around the masks of over-long texts instead of failing"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (one object per text) instead of a table")
    return parser.parse_args(argv)


def format_table(text: str, result, joint: bool) -> str:
    lines = [text]
    if joint:
        return "\n".join(lines + [f"  {result['sequence']}  (score {result['score']:.4f})"])
    per_mask = [result] if result and isinstance(result[0], dict) else result
    for m, predictions in enumerate(per_mask):
        if len(per_mask) > 1:
            lines.append(f"  mask {m + 1}:")
        for rank, p in enumerate(predictions, 1):
            lines.append(f"  {rank:>2}  {p['token_str']:<20} {p['score']:.4f}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    setup_logging(logging.WARNING)
    args = parse_args(argv)
    if not args.texts and sys.stdin.isatty():  # nothing piped in: say so rather than wait on the terminal
        print(
            'error: no texts; pass them as arguments (python -m deniro_rt "A great [MASK]!") or pipe lines on stdin',
            file=sys.stderr,
        )
        return EXIT_USAGE
    # Empty piped input (an empty file, a filter that matched nothing) prints nothing and succeeds, like cat.
    # Ctrl-C while stdin is read, onnxruntime imports or the texts are filled was a KeyboardInterrupt traceback.
    read = (lambda: (args.texts, None)) if args.texts else stdin_texts
    stopped = "interrupted: the results printed above are complete, no others were printed"
    return run_main(lambda: fill_and_print(args, *read()), interrupted=stopped)


def stdin_texts() -> tuple[list[str], list[int]]:
    """The non-blank lines of stdin (CRLF or LF) and their line numbers. Bytes that are not UTF-8 are kept as
    surrogates, so the runtime's check names the line instead of the decoder failing on the whole input."""
    texts, numbers = [], []
    stdin = getattr(sys.stdin, "buffer", None)  # None: replaced by a text stream (an embedding app, a test)
    lines = stdin if stdin is not None else (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
    for number, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if line.strip():
            texts.append(line)
            numbers.append(number)
    return texts, numbers


def cli_targets(text: str | None) -> list[str] | None:
    """--targets "movie,film" -> ["movie", "film"]; None when not given. An empty word ("movie,,film", a trailing
    comma) was the runtime's "non-empty list of non-empty strings, got ['movie', '', 'film']", a list the user never
    wrote, and `--targets ""` silently ranked the whole vocabulary."""
    if text is None:
        return None
    words = [word.strip() for word in text.split(",")]
    if not all(words):
        raise DeniroError(
            f"--targets {text!r} has an empty word; pass comma-separated words, e.g. --targets movie,film"
        )
    return words


def fill_and_print(args: argparse.Namespace, texts: list[str], lines: list[int] | None) -> None:
    from .runtime import FillMask

    targets = cli_targets(args.targets)  # before the model loads: a typo fails at once
    runtime = FillMask(args.model, device=args.device, precision=args.precision)
    try:
        results = runtime.fill(
            texts,
            top_k=args.top_k,
            targets=targets,
            batch_size=args.batch_size,
            truncation=args.truncation,
            joint=args.joint,
        )
    except TextError as exc:  # texts from stdin: name the line (blank lines are skipped, so text i is not line i)
        exc = exc.naming("--truncation")  # the fix in this command's words
        raise exc if lines is None else DeniroError(f"stdin line {lines[exc.index]}: {exc}") from None
    for text, result in zip(texts, results):
        print(json.dumps({"text": text, "result": result}) if args.json else format_table(text, result, args.joint))


if __name__ == "__main__":
    sys.exit(run())
