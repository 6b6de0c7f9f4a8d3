"""python -m deniro_rt batch: fill [MASK] in a column of a corpus and write parquet.

Examples:
  python -m deniro_rt batch --input reviews.parquet --column text --output out/
  python -m deniro_rt batch --input sentences.txt --output out/ --top-k 3          # one text per line
  python -m deniro_rt batch --input reviews.parquet --output out/ --ray --concurrency 4
  RAY_ADDRESS=ray://head:10001 python -m deniro_rt batch --input ... --output ... --ray

Writes <output>/predictions/part-00000.parquet, ... (read them with pq.read_table(<output>/predictions)):
the input columns, then `top1` and `top1_score` (the first mask's best word and its probability) and
list columns per mask: `mask_positions`, `token_ids`, `token_strs`, `scores` (top-k, best first; an
empty list and position -1 for a mask truncation cut away, whose rows one warning at the end names) and,
with --sequences, `sequences` (the filled texts);
then <output>/batch_config.json (the options, the precision, provider and threads that ran, the timing).
Shards of --rows-per-shard rows are written as the fill goes, each
atomically, into <output>.partial/, renamed to <output> at the end: an existing <output> is only
replaced then (with --overwrite), so a failing run keeps it. A run that was killed leaves
<output>.partial/ with its finished shards: --resume continues from there (same input, its files unchanged
in size and time, and same options; a shard damaged since is filled again); a complete <output> has nothing
to resume. Rows that cannot be filled (not text, no [MASK], or without --truncation over the model's
positions) are listed before any work.
Without --ray the fill runs in this process in batches (all cores, one ONNX Runtime session); with --ray on a
fixed pool of Ray Data actors (extra deniro[ray]), each reserving --cpus-per-worker CPUs and running that many
ORT threads. The input is read and the shards written by this (driver) process in input order; the actors do
the fill, handed whole shards a window at a time: at least 262,144 rows, and 256 batches for each actor (each
window a Ray dataset of its own, whose actors load the model again). Neither a parquet input nor the output is
held whole: the checks read the text column alone, a chunk at a time, and the fill reads 131,072 rows at a
time (a whole row group for a file of other columns than the folder's first, or under a hive partition); a
text file is held whole. Peak RSS in process, 60-character rows and an id column in one file of pyarrow's
default row groups (1,048,576 rows): a 2-layer test model 317 MB at 1M rows and 559 MB at 4M when the input
was read whole, 258 and 262 MB now; the shipped model in fp32 at 1M rows 445 MB then, 402 MB now.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DeniroError
from ..files import check_output_folder, publish, resume_record, write_text_atomically
from ..providers import DEVICES, PRECISION_HELP, RUNTIME_PRECISIONS

log = logging.getLogger(__name__)
SHARDS = "predictions"  # <output>/predictions/part-NNNNN.parquet
CONFIG_FILE = "batch_config.json"
JOB_FILE = "job.json"  # in <output>.partial: the options a --resume must match
TEXT_SUFFIXES = (".txt", ".text")
SHOWN_ROWS = 5  # row numbers listed in an error message
LENGTH_CHUNK = 4096  # texts tokenized at once by the up-front length check
CHECK_CHUNK = 65_536  # rows the up-front checks turn into Python strings at once (column_chunks)
RAY_WINDOW_ROWS = 262_144  # rows (whole shards) --ray hands Ray Data at once at least (ray_windows)
# and at least this many batches for each actor of the pool: every window starts its actors and loads the model
# again, so a large pool gets windows large enough for that to stay a small share of each actor's work
WINDOW_BATCHES_PER_ACTOR = 256


@dataclass
class BatchConfig:
    input: str  # .parquet file, folder of .parquet files, or .txt (one text per line, column "text")
    output: str  # folder to create: predictions.parquet + batch_config.json
    column: str = "text"
    model: str | None = None  # export folder; None: the shipped model
    device: str = "cpu"
    precision: str | None = None  # None: each worker's default (batch_config.json records the one that ran)
    top_k: int = 5
    truncation: bool = False  # keep a window around the masks of over-long texts instead of failing
    batch_size: int = 256  # rows per fill call (Ray: rows per map_batches batch and per block)
    ray: bool = False  # fill through Ray Data
    concurrency: int | None = None  # Ray actors; None: the cluster's CPUs // cpus_per_worker
    cpus_per_worker: float = 1.0  # Ray num_cpus per actor = its ORT intra-op threads
    gpus_per_worker: float = 0.0
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS, else a local Ray
    overwrite: bool = False
    sequences: bool = False  # add the filled texts (a string per candidate)
    rows_per_shard: int = 8192  # rows per output file, written as soon as filled
    resume: bool = False  # continue from the shards in <output>.partial

    def spec(self):
        from .ray import FillSpec

        return FillSpec(
            column=self.column,
            model=self.model,
            device=self.device,
            precision=self.precision,
            top_k=self.top_k,
            cpus_per_worker=self.cpus_per_worker,
            gpus_per_worker=self.gpus_per_worker,
            truncation=self.truncation,
            sequences=self.sequences,
            truncation_option="--truncation",
        )

    def job(self, rows: int) -> dict:
        """What decides the output: a --resume must match it (workers and Ray options may differ)."""
        keys = (
            "input",
            "column",
            "model",
            "precision",
            "top_k",
            "truncation",
            "batch_size",
            "sequences",
            "rows_per_shard",
        )
        # the input as an absolute path: the same file named from another directory resumes, another file does not;
        # its files' sizes and times: an input edited in place (same path, same rows) does not either
        path = Path(self.input).resolve()
        return {**{k: getattr(self, k) for k in keys}, "input": str(path), "rows": rows, "input_files": stamp(path)}


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> BatchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m deniro_rt batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    inputs = "a .parquet file, a folder of .parquet files, or a .txt file (one text per line; blank lines skipped)"
    add("--input", required=True, help=inputs)
    add("--output", required=True, help="output folder (created; must not exist unless --overwrite)")
    add("--column", default="text", help="column holding texts with [MASK] (default: text)")
    add("--model", default=None, help="export folder (default: the shipped IMDB model)")
    add("--device", default="cpu", choices=DEVICES, help="per worker (default: cpu)")
    add("--precision", default=None, choices=RUNTIME_PRECISIONS, help=PRECISION_HELP)
    add("--top-k", type=int, default=5, help="predictions per mask kept (default: 5)")
    truncation_help = "keep a window around the masks of over-long texts (without it they are listed before any work)"
    add("--truncation", action="store_true", help=truncation_help + "; one warning names rows with masks cut away")
    add("--batch-size", type=int, default=256, help="rows per fill call / Ray Data batch (default: 256)")
    add("--ray", action="store_true", help="fill through Ray Data (extra deniro[ray])")
    add(
        "--concurrency",
        type=int,
        default=None,
        help="Ray actors (implies --ray; default: the cluster's CPUs // --cpus-per-worker)",
    )
    add("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per actor = its ORT threads (default: 1)")
    add("--gpus-per-worker", type=float, default=0.0, help="Ray GPUs per actor, with --device cuda (default: 0)")
    add("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    add("--overwrite", action="store_true", help="replace an existing --output folder (when the run succeeds)")
    add("--sequences", action="store_true", help="also write the filled texts (column sequences)")
    add("--rows-per-shard", type=int, default=8192, help="rows per output parquet file (default: 8192)")
    add("--resume", action="store_true", help="continue a killed run from the shards in <output>.partial")
    args = vars(parser.parse_args(argv))
    args["ray"] = args["ray"] or args["concurrency"] is not None or args["address"] is not None
    return BatchConfig(**args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m deniro_rt batch`: one `error:` line and exit 2 on bad input."""
    from ..cli import run_main, setup_logging

    setup_logging(logging.WARNING, ours=(__name__,))
    config = parse_args(argv)
    return run_main(lambda: run_batch(config), interrupted=lambda: interrupted(config))


def interrupted(config: BatchConfig) -> str:
    """Ctrl-C: the finished shards are kept; say where, and how to go on."""
    staging = staging_folder(Path(config.output).resolve())
    kept = f"the finished shards stay in {staging}; " if staging.is_dir() else ""
    return f"interrupted: {kept}run the same command with --resume to continue"


# ---------------------------------------------------------------------- the run
def run_batch(config: BatchConfig) -> Path:
    """Validate the input, fill every row into shards in <output>.partial, rename it to <output>."""
    check_config(config)
    source, lines = read_input(Path(config.input), config.column)
    check_input(source, config, lines)
    output = Path(config.output).resolve()
    check_output(output, config)
    with ray_connection(config):  # the workers' resources are checked before any output is touched
        staging, writer, seconds = fill_staging(source, config, output)
    first_row = writer.first_row
    filled = source.num_rows - first_row
    finish(
        staging,
        output,
        {
            **asdict(config),
            **what_ran(writer.ran),
            "rows": source.num_rows,
            "seconds": seconds,
            "resumed_from_row": first_row,
        },
    )
    log_cut_rows(writer.cut_rows, filled, lines)
    log.info(
        "filled %d rows in %.1f s (%.1f rows/s) -> %s", filled, seconds, filled / max(seconds, 1e-9), output / SHARDS
    )
    return output


def fill_staging(source, config: BatchConfig, output: Path) -> tuple[Path, ShardWriter, float]:
    """Fill the rows still missing into shards in <output>.partial; returns that folder, its writer (its
    first_row: the first row filled by this run, after --resume's shards) and the seconds the fill took.
    source: the input (source.py), read shard by shard."""
    staging = staging_folder(output)
    writer = ShardWriter(staging / SHARDS, config.rows_per_shard, open_staging(staging, config, source.num_rows))
    start = time.perf_counter()
    try:
        (fill_on_ray if config.ray else fill_in_process)(source, config, writer)
    except DeniroError:  # a row the model refuses: the same input fails again, nothing worth resuming
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, writer, time.perf_counter() - start


def log_cut_rows(cut_rows: list[int], filled: int, lines: list[int] | None) -> None:
    """One warning for the run, naming input rows (or lines): the runtime's own warning, once per fill call,
    could only number texts within a batch, so the workers leave it to this."""
    if cut_rows:
        log.warning(
            "--truncation cut masks away in %d of %d rows filled (%s): they lie outside the token window kept; "
            "those masks have mask_positions -1 and empty token_ids, token_strs and scores",
            len(cut_rows),
            filled,
            _rows(cut_rows, lines),
        )


@contextmanager
def ray_connection(config: BatchConfig):
    """With --ray: connected to Ray (a local Ray started here is shut down after) and the workers' CPUs and
    GPUs checked against its nodes; without: nothing."""
    if not config.ray:
        yield
        return
    ray = import_ray()
    from .ray import check_node_fits

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        check_node_fits(config.cpus_per_worker, config.gpus_per_worker, "--cpus-per-worker", "--gpus-per-worker")
        yield
    finally:
        if started_here:
            ray.shutdown()


def staging_folder(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def check_config(config: BatchConfig) -> None:
    if config.batch_size < 1 or config.top_k < 1 or config.rows_per_shard < 1:
        raise DeniroError("--batch-size, --top-k and --rows-per-shard must be positive integers")
    if config.concurrency is not None and config.concurrency < 1:
        raise DeniroError(f"--concurrency must be at least 1, got {config.concurrency}")
    if not 0 < config.cpus_per_worker < math.inf:  # nan too: it reached int(cpus // nan) in the pool's size
        raise DeniroError(f"--cpus-per-worker must be a positive number, got {config.cpus_per_worker}")
    if not 0 <= config.gpus_per_worker < math.inf:  # a negative one failed in Ray, after the output was started
        raise DeniroError(f"--gpus-per-worker must be 0 or a positive number, got {config.gpus_per_worker}")
    import_pyarrow()
    if config.ray:
        import_ray()


def import_pyarrow():
    try:
        import pyarrow
    except ImportError as exc:
        raise DeniroError(
            "the batch command reads and writes parquet with pyarrow, which is not "
            'installed; pip install "deniro[batch]" (or "deniro[ray]")'
        ) from exc
    return pyarrow


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise DeniroError(
            '--ray needs Ray Data, which is not installed; pip install "deniro[ray]", '
            "or leave out --ray/--concurrency/--address to fill in this process"
        ) from exc
    return ray


# ---------------------------------------------------------------------- input and checks
def read_input(path: Path, column: str):
    """The input (source.py: a ParquetInput read a piece at a time, or a text file's lines as a TableInput)
    with `column` present and rows, and for a text file the line number of each row (blank lines are skipped,
    so error messages name lines, not rows); None for parquet."""
    pa = import_pyarrow()
    from .source import ParquetInput, TableInput

    if not path.exists():
        raise DeniroError(
            f"--input {path} does not exist; pass a .parquet file, a folder of .parquet "
            f"files, or a .txt file with one text per line"
        )
    numbers = None
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        numbered = [(n, line) for n, line in enumerate(text_lines(path), 1) if line.strip()]
        numbers = [n for n, _ in numbered]
        source = TableInput(pa.table({column: [line for _, line in numbered]}))
    else:
        source = ParquetInput(path)  # the files' footers only: rows and schema
    if column not in source.column_names:
        raise DeniroError(
            f"--input {path} has no column {column!r} (it has: "
            f"{', '.join(source.column_names)}); pass --column with the text column"
        )
    if source.num_rows == 0:
        raise DeniroError(f"--input {path} has no rows; nothing to fill")
    return source, numbers


def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (LF or CRLF), or an error naming the first line that is not UTF-8."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DeniroError(f"--input {path}: line {number} is not valid UTF-8; save the file as UTF-8") from None
    return lines


def check_input(source, config: BatchConfig, lines: list[int] | None) -> None:
    """Every check of the input, over all its rows, before any output is touched."""
    import pyarrow as pa

    check_columns(source.column_names, config)
    check_text_type(source.schema, config)
    check_texts(source.column(config.column), config, lines)
    # the reader's decoding buffers, freed but kept by Arrow's pool, go back now, not after the model has
    # loaded on top of them (with the whole input read at once: +111 MB next to a million short rows' 57 MB)
    pa.default_memory_pool().release_unused()


def check_columns(names: list[str], config: BatchConfig) -> None:
    """The output adds its columns next to the input's: an input column of the same name (an earlier
    output read back, say) would make a table with two columns of one name, which readers refuse."""
    from .ray import ADDED, SEQUENCES

    clash = [n for n in names if n in ADDED + ((SEQUENCES,) if config.sequences else ())]
    if clash:
        raise DeniroError(
            f"--input has column(s) {', '.join(clash)}, which the output adds (is it an earlier output?); "
            f"drop or rename them first"
        )


def is_text_type(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):  # a categorical column of strings
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def check_text_type(schema, config: BatchConfig) -> None:
    """A column of numbers or bytes is the wrong column (or not stored as text), not rows to drop."""
    kind = schema.field(config.column).type
    if is_text_type(kind):
        return
    texts = [f.name for f in schema if is_text_type(f.type)]
    hint = (
        f"the text columns: {', '.join(texts)}" if texts else "the input has no text column; store the texts as strings"
    )
    raise DeniroError(
        f"--input column {config.column!r} holds {kind}, not text; pass --column with the column of texts "
        f"with [MASK] ({hint})"
    )


def check_texts(column, config: BatchConfig, lines: list[int] | None = None) -> None:
    """Every row must be a non-empty string with the model's mask token: fail before any work. column: the
    input's text column (Arrow), turned into Python strings CHECK_CHUNK rows at a time; lines: the text file's
    line number of each row (messages then name lines)."""
    from ..artifact import load_manifest
    from ..models import DEFAULT_MODEL_DIR

    manifest = load_manifest(DEFAULT_MODEL_DIR if config.model is None else config.model)
    mask = manifest.mask_token
    bad = BadRows()
    for start, texts in column_chunks(column):
        bad.add(start, texts, mask)
    total = len(column)
    if bad.not_text:
        raise DeniroError(
            f"{len(bad.not_text)} of {total} rows of column {config.column!r} are empty or "
            f"not text ({_rows(bad.not_text, lines)}); drop or fill those rows first"
        )
    if bad.no_mask:
        hint = f" (the mask token is case-sensitive: write {mask})" if bad.other_case else ""
        raise DeniroError(
            f"{len(bad.no_mask)} of {total} rows of column {config.column!r} have no {mask} "
            f"({_rows(bad.no_mask, lines)}; first: {bad.first_no_mask[:60]!r}){hint}; put {mask} "
            f"where a word should be predicted in every row, or filter those rows out first"
        )
    if not config.truncation:
        check_lengths(column, config, manifest, lines)


def column_chunks(column):
    """(first row, the rows as Python values) of consecutive slices of an Arrow column, or of a parquet
    input's column read chunk by chunk (source.ColumnReader): a list of every text at once held the input a
    second time (+109 MB for a million 60-character rows, as large as the read table and its pool together)."""
    from .source import ColumnReader

    if isinstance(column, ColumnReader):
        yield from column.chunks(CHECK_CHUNK)
        return
    for start in range(0, len(column), CHECK_CHUNK):
        yield start, column.slice(start, CHECK_CHUNK).to_pylist()


@dataclass
class BadRows:
    """The rows check_texts refuses, gathered chunk by chunk (row numbers of the whole column)."""

    not_text: list[int] = field(default_factory=list)  # empty, or not a string
    no_mask: list[int] = field(default_factory=list)  # text without the mask token
    first_no_mask: str = ""  # the first of those, shown in the message
    other_case: bool = False  # one of them has the mask token in another case

    def add(self, start: int, texts: list, mask: str) -> None:
        text = [isinstance(t, str) and bool(t.strip()) for t in texts]
        self.not_text += [start + i for i, ok in enumerate(text) if not ok]
        missing = [i for i, ok in enumerate(text) if ok and mask not in texts[i]]
        if missing and not self.no_mask:
            self.first_no_mask = texts[missing[0]]
        self.no_mask += [start + i for i in missing]
        self.other_case = self.other_case or any(mask.lower() in texts[i].lower() for i in missing)


def check_lengths(column, config: BatchConfig, manifest, lines: list[int] | None = None) -> None:
    """Without --truncation the model refuses a text over its positions, and that ended the job at its row,
    possibly hours in: count the tokens of every text that could be too long first. A WordPiece token
    covers at least one character (lowercasing grows a character to at most two after accents are
    stripped), so a text of under (positions - 2) / 2 characters fits: short-sentence jobs tokenize nothing
    twice. column: the input's text column (Arrow), read in chunks as check_texts reads it."""
    from tokenizers import Tokenizer

    from ..artifact import TOKENIZER_FILE, verify_file

    tokenizer, too_long, first_length = None, [], 0
    for start, texts in column_chunks(column):
        rows = [i for i, t in enumerate(texts) if 2 * len(t) + 2 > manifest.max_positions]
        if rows and tokenizer is None:
            tokenizer = Tokenizer.from_file(str(verify_file(manifest, TOKENIZER_FILE)))
            tokenizer.no_truncation()  # as the runtime: [CLS] and [SEP] counted, nothing cut
        for row, n in zip(rows, token_counts(tokenizer, [texts[i] for i in rows])):
            if n > manifest.max_positions:
                first_length = first_length or n
                too_long.append(start + row)
    if too_long:
        raise DeniroError(
            f"{len(too_long)} of {len(column)} rows of column {config.column!r} are longer than the model's "
            f"{manifest.max_positions} tokens ({_rows(too_long, lines)}; the first is {first_length} "
            f"tokens); pass --truncation to keep a window around their masks, or shorten or filter those rows"
        )


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text, LENGTH_CHUNK texts at a time (all encodings at once would hold every token)."""
    counts = []
    for start in range(0, len(texts), LENGTH_CHUNK):
        counts += [len(e.ids) for e in tokenizer.encode_batch_fast(texts[start : start + LENGTH_CHUNK])]
    return counts


def _rows(indices: list[int], lines: list[int] | None = None) -> str:
    """ "rows 0, 3" (0-based table rows) or, for a text file, "lines 1, 4" (its 1-based line numbers)."""
    shown = ", ".join(str(i if lines is None else lines[i]) for i in indices[:SHOWN_ROWS])
    return ("rows " if lines is None else "lines ") + shown + (", ..." if len(indices) > SHOWN_ROWS else "")


def check_output(output: Path, config: BatchConfig) -> None:
    """output: resolved. It is replaced whole at the end, so it cannot hold the working directory."""
    if Path.cwd().resolve().is_relative_to(output):
        raise DeniroError(f"--output {output} is the working directory or holds it; pass a new folder, e.g. ./filled")
    # a file, a path it cannot write, or a folder holding --input (--overwrite deleted an input file kept there)
    check_output_folder(output, {"--input": config.input})
    finished = output.is_dir() and any(output.iterdir())
    if finished and config.resume and not staging_folder(output).exists():
        raise DeniroError(
            f"--resume: {output} is complete (no unfinished run in {staging_folder(output)}); nothing to resume "
            "(--overwrite without --resume fills it again)"
        )
    if finished and not config.overwrite:
        raise DeniroError(f"--output {output} exists and is not empty; pass another folder or --overwrite")


# ---------------------------------------------------------------------- fill
def fill_in_process(source, config: BatchConfig, writer: ShardWriter) -> None:
    """Fill in this process, `batch_size` rows at a time (batches restart at each shard, so a resumed run
    fills exactly the batches an uninterrupted one does), with a progress bar."""
    import pyarrow as pa

    from .ray import FillMaskBatch

    spec = config.spec()
    worker = FillMaskBatch(
        spec.model,
        spec.device,
        spec.precision,
        threads=None,
        top_k=spec.top_k,
        column=spec.column,
        truncation=spec.truncation,
        sequences=spec.sequences,
        batch_size=config.batch_size,
        truncation_option=spec.truncation_option,
    )
    with _progress(source.num_rows, "fill") as bar:
        bar.update(writer.first_row)
        row = writer.first_row
        for batch in shard_batches(source, writer.first_row, config):
            try:
                writer.add(worker(pa.Table.from_batches([batch])))
            except DeniroError as exc:  # its "text i" counts from the batch's first row
                raise DeniroError(f"rows {row}-{row + batch.num_rows - 1}: {exc}") from None
            row += batch.num_rows
            bar.update(batch.num_rows)
    writer.close()


def shard_batches(source, first_row: int, config: BatchConfig):
    """Record batches of at most batch_size rows from first_row on, never crossing a shard boundary (nor a
    chunk of the input as pq.read_table reads it: source.shards), the input read a shard at a time."""
    from .source import shards

    for shard in shards(source, first_row, config.rows_per_shard):
        yield from shard.to_batches(max_chunksize=config.batch_size)


def fill_on_ray(source, config: BatchConfig, writer: ShardWriter) -> None:
    """Fill on a pool of Ray Data actors (Ray connected: ray_connection), blocks of `batch_size` rows, one
    window of whole shards (ray_windows) at a time; results come back in input order and are written as
    shards here, as they arrive."""
    ray = import_ray()
    from .ray import fill_dataset

    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        context.enable_progress_bars = False  # one bar (ours, on the driver) instead of one per operator
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # after import: Ray sets it on import
        pool = _pool_size(ray, config)
        with _progress(source.num_rows, "fill (ray)") as bar:
            bar.update(writer.first_row)
            for blocks in ray_windows(source, writer.first_row, config, pool):
                _collect(fill_dataset(ray.data.from_arrow(blocks), config.spec(), pool, config.batch_size), writer, bar)
        writer.close()
    except Exception as exc:  # a DeniroError of a worker arrives wrapped (RayTaskError, UserCodeException)
        refusal = _worker_error(exc)
        if refusal is None:
            raise
        raise refusal from None


def _pool_size(ray, config: BatchConfig) -> int:
    if config.concurrency is not None:
        return config.concurrency
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // config.cpus_per_worker))


def window_rows(config: BatchConfig, pool: int) -> int:
    """Rows a --ray window holds at least: RAY_WINDOW_ROWS, or WINDOW_BATCHES_PER_ACTOR batches for each of
    the pool's actors where that is more (64 actors of 256-row batches: 4,194,304 rows)."""
    return max(RAY_WINDOW_ROWS, pool * config.batch_size * WINDOW_BATCHES_PER_ACTOR)


def ray_windows(source, first_row: int, config: BatchConfig, pool: int):
    """Lists of blocks (tables of shard_batches' batches) of whole shards, window_rows rows or one shard
    each: Ray Data takes a list of blocks, so one list of every block held the whole input on the driver (and
    in Ray's object store). Each window is a Ray dataset of its own; its actors load the model again."""
    import pyarrow as pa

    from .source import shards

    per_window = max(1, window_rows(config, pool) // config.rows_per_shard)
    window = []
    for n, shard in enumerate(shards(source, first_row, config.rows_per_shard), 1):
        window += [pa.Table.from_batches([b]) for b in shard.to_batches(max_chunksize=config.batch_size)]
        if n % per_window == 0:
            yield window
            window = []
    if window:
        yield window


def _collect(dataset, writer: ShardWriter, bar) -> None:
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        writer.add(batch)
        bar.update(batch.num_rows)


def _worker_error(exc: BaseException) -> DeniroError | None:
    """The DeniroError a Ray worker raised, as one message. Ray Data hands back only its text (a
    RayTaskError(UserCodeException) around the worker's formatted traceback), so it is read from there."""
    names = "DeniroError|DeniroTypeError|ArtifactError|TextError|TooLongError"  # errors.py
    found = re.search(rf"(?:{names}): (.+)", str(exc))
    if found is None:
        return None
    return DeniroError(f"a Ray worker refused a batch of up to --batch-size rows ({found.group(1).strip()})")


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # core install: no bar, the final log line still reports the rate
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="rows", dynamic_ncols=True)


def stamp(path: Path) -> list[list]:
    """[name, size, mtime_ns] of the input's files (a folder of parquet files: each, in name order)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    names = [str(p.relative_to(path)) if path.is_dir() else p.name for p in files]
    return [[name, p.stat().st_size, p.stat().st_mtime_ns] for name, p in zip(names, files)]


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        return None


# ---------------------------------------------------------------------- output
def open_staging(staging: Path, config: BatchConfig, rows: int) -> int:
    """Prepare <output>.partial; returns the number of shards already written (--resume), else 0."""
    job, job_file = config.job(rows), staging / JOB_FILE
    if staging.exists() and config.resume:
        saved = saved_job(job_file)
        if saved and "input_files" not in saved:  # a job file from before the input's stamp: not checked
            saved["input_files"] = job["input_files"]
        changed = sorted(k for k in job if saved.get(k) != job[k])
        if changed:
            raise DeniroError(
                f"--resume: {staging} was written with other {', '.join(changed)}; resume with "
                f"the same input and options, or drop --resume and pass --overwrite to start over"
            )
        done = count_shards(staging / SHARDS, rows, config.rows_per_shard)
        log.info("resuming after %d shards (%d rows)", done, min(rows, done * config.rows_per_shard))
        return done
    if staging.exists() and not config.overwrite:
        raise DeniroError(
            f"{staging} holds an unfinished run; pass --resume to continue it, or --overwrite to start over"
        )
    shutil.rmtree(staging, ignore_errors=True)
    (staging / SHARDS).mkdir(parents=True)
    write_text_atomically(job_file, json.dumps(job, indent=2) + "\n")
    return 0


def saved_job(job_file: Path) -> dict:
    """The options an unfinished run was started with. Without its job file the refusal named every option as
    changed ("written with other batch_size, column, ..."): misleading, as the run's options are unknown."""
    if not job_file.is_file():
        raise DeniroError(
            f"--resume: {job_file} is missing, so the input and options given now cannot be checked against the "
            "unfinished run's; put back the file the run wrote (the input and options it was started with), or drop "
            "--resume and pass --overwrite to start over"
        )
    return resume_record(job_file, "drop --resume and pass --overwrite to start over")


def count_shards(folder: Path, rows: int, rows_per_shard: int) -> int:
    """Shards are written in order and each atomically: the first one missing, or damaged since (not readable
    as parquet, or not its rows: it was counted as done and ended up in the output), is where the fill resumes."""
    done = 0
    while (folder / shard_name(done)).is_file():
        expected = min(rows_per_shard, rows - done * rows_per_shard)
        if shard_rows(folder / shard_name(done)) != expected:
            log.warning("%s is damaged (not %d rows of parquet): filling it again", folder / shard_name(done), expected)
            break
        done += 1
    return done


def shard_rows(path: Path) -> int | None:
    """The rows a parquet file's footer declares; None when it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError):
        return None


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ShardWriter:
    """Writes consecutive Arrow tables as parquet shards of `rows` rows, each atomically (a temp file
    published under its final name), so a shard on disk is always complete."""

    def __init__(self, folder: Path, rows: int, done: int):
        self.folder, self.rows, self.index = folder, rows, done
        self.first_row = done * rows  # the first input row still to fill
        self.pending: list = []  # tables filled but not written yet
        self.pending_rows = 0
        self.next_row = self.first_row  # the input row of the next table added
        self.cut_rows: list[int] = []  # input rows with a mask truncation cut away
        self.ran: set[bytes] = set()  # what the workers ran: their tables' RAN_KEY metadata (what_ran)

    def add(self, table) -> None:
        from .ray import RAN_KEY

        self.ran.add((table.schema.metadata or {}).get(RAN_KEY, b"{}"))
        self.cut_rows += rows_with_cut_masks(table, self.next_row)
        self.next_row += table.num_rows
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows:
            self._write(self.rows)

    def close(self) -> None:
        if self.pending_rows:
            self._write(self.pending_rows)

    def _write(self, n: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        joined = pa.concat_tables(self.pending)
        path = self.folder / shard_name(self.index)
        temp = self.folder / f".{path.name}.tmp"
        pq.write_table(joined.slice(0, n), temp)
        publish(temp, path)  # a new name: a plain atomic rename
        rest = joined.slice(n)
        self.pending, self.pending_rows, self.index = [rest] if rest.num_rows else [], rest.num_rows, self.index + 1


def rows_with_cut_masks(table, first_row: int) -> list[int]:
    """Input rows of a filled table (its first: first_row) with a mask truncation cut away: a -1 among its
    mask_positions (text_columns)."""
    import pyarrow.compute as pc

    from .ray import MASK_POSITIONS

    positions = table.column(MASK_POSITIONS).combine_chunks()  # one ListArray: parent indices count from 0
    cut = pc.equal(pc.list_flatten(positions), -1)
    return [first_row + row for row in pc.unique(pc.filter(pc.list_parent_indices(positions), cut)).to_pylist()]


def what_ran(records: set[bytes]) -> dict:
    """The precision, provider and threads the workers ran (FillMaskBatch's RAN_KEY records), for
    batch_config.json: --precision and --device may leave the choice to each machine (bf16 or fp32). One value
    each where the workers agree, else the sorted values (Ray workers on unlike nodes); None where this run
    filled nothing (a --resume with every shard written)."""
    runs = [json.loads(record) for record in records]
    ran = {}
    for key in ("precision", "provider", "threads"):
        values = sorted({run[key] for run in runs if key in run})
        ran[key] = values[0] if len(values) == 1 else values or None
    return ran


def finish(staging: Path, output: Path, summary: dict) -> None:
    """Write batch_config.json, then rename <output>.partial to <output> (an old <output> goes only now)."""
    (staging / JOB_FILE).unlink(missing_ok=True)
    write_text_atomically(staging / CONFIG_FILE, json.dumps(summary, indent=2) + "\n")
    publish(staging, output)  # output only reached when empty or --overwrite (check_output)
