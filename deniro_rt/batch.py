"""python -m deniro_rt batch: fill [MASK] in a column of a corpus and write parquet.

Examples:
  python -m deniro_rt batch --input reviews.parquet --column text --output out/
  python -m deniro_rt batch --input sentences.txt --output out/ --top-k 3          # one text per line
  python -m deniro_rt batch --input reviews.parquet --output out/ --ray --concurrency 4
  RAY_ADDRESS=ray://head:10001 python -m deniro_rt batch --input ... --output ... --ray

Writes <output>/predictions.parquet (the input columns, then `top1` and `top1_score` of each
row's first mask and `predictions`: the row's full deniro_rt.fill result as JSON) and
<output>/batch_config.json, into a temporary folder renamed to <output> at the end: an
interrupted run leaves no partial output, and an existing <output> is only replaced with
--overwrite. Without --ray the fill runs in this process in batches (all cores, one ONNX Runtime
session); with --ray on a fixed pool of Ray Data actors (extra deniro[ray]), each reserving
--cpus-per-worker CPUs and running that many ORT threads. The input is read and the output written
by this (driver) process; the actors do the fill.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DeniroError
from .files import publish

log = logging.getLogger(__name__)
OUTPUT_FILE = "predictions.parquet"
CONFIG_FILE = "batch_config.json"
TEXT_SUFFIXES = (".txt", ".text")
SHOWN_ROWS = 5  # row numbers listed in an error message


@dataclass
class BatchConfig:
    input: str  # .parquet file, folder of .parquet files, or .txt (one text per line, column "text")
    output: str  # folder to create: predictions.parquet + batch_config.json
    column: str = "text"
    model: str | None = None  # export folder; None: the shipped model
    device: str = "cpu"
    precision: str | None = None
    top_k: int = 5
    truncation: bool = False  # keep a window around the masks of over-long texts instead of failing
    batch_size: int = 256  # rows per fill call (Ray: rows per map_batches batch and per block)
    ray: bool = False  # fill through Ray Data
    concurrency: int | None = None  # Ray actors; None: the cluster's CPUs // cpus_per_worker
    cpus_per_worker: float = 1.0  # Ray num_cpus per actor = its ORT intra-op threads
    gpus_per_worker: float = 0.0
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS, else a local Ray
    overwrite: bool = False

    def spec(self):
        from .ray_data import FillSpec

        return FillSpec(column=self.column, model=self.model, device=self.device, precision=self.precision,
                        top_k=self.top_k, cpus_per_worker=self.cpus_per_worker,
                        gpus_per_worker=self.gpus_per_worker, truncation=self.truncation)


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> BatchConfig:
    parser = argparse.ArgumentParser(prog="python -m deniro_rt batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--input", required=True, help="a .parquet file, a folder of .parquet files, or a .txt file")
    add("--output", required=True, help="output folder (created; must not exist unless --overwrite)")
    add("--column", default="text", help="column holding texts with [MASK] (default: text)")
    add("--model", default=None, help="export folder (default: the shipped IMDB model)")
    add("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="per worker (default: cpu)")
    add("--precision", default=None, choices=["fp32", "fp16", "int8"],
        help="graph to run (default: fp32 on CPU, fp16 on CUDA if exported; int8 is opt-in)")
    add("--top-k", type=int, default=5, help="predictions per mask kept (default: 5)")
    add("--truncation", action="store_true", help="keep a window around the masks of over-long texts")
    add("--batch-size", type=int, default=256, help="rows per fill call / Ray Data batch (default: 256)")
    add("--ray", action="store_true", help="fill through Ray Data (extra deniro[ray])")
    add("--concurrency", type=int, default=None,
        help="Ray actors (implies --ray; default: the cluster's CPUs // --cpus-per-worker)")
    add("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per actor = its ORT threads (default: 1)")
    add("--gpus-per-worker", type=float, default=0.0, help="Ray GPUs per actor, with --device cuda (default: 0)")
    add("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    add("--overwrite", action="store_true", help="replace an existing --output folder")
    args = vars(parser.parse_args(argv))
    args["ray"] = args["ray"] or args["concurrency"] is not None or args["address"] is not None
    return BatchConfig(**args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m deniro_rt batch`: one `error:` line and exit 2 on bad input."""
    from .cli import run_main, setup_logging

    setup_logging(logging.WARNING, ours=(__name__,))
    config = parse_args(argv)
    return run_main(lambda: run_batch(config))


# ---------------------------------------------------------------------- the run
def run_batch(config: BatchConfig) -> Path:
    """Validate the input, fill every row, write <output> atomically; returns the output folder."""
    check_config(config)
    table = read_input(Path(config.input), config.column)
    check_texts(table.column(config.column).to_pylist(), config)
    output = Path(config.output)
    check_output(output, config.overwrite)
    start = time.perf_counter()
    filled = fill_on_ray(table, config) if config.ray else fill_in_process(table, config)
    seconds = time.perf_counter() - start
    write_atomically(filled, output, {**asdict(config), "rows": table.num_rows, "seconds": seconds})
    log.info("filled %d rows in %.1f s (%.1f rows/s) -> %s", table.num_rows, seconds,
             table.num_rows / max(seconds, 1e-9), output / OUTPUT_FILE)
    return output


def check_config(config: BatchConfig) -> None:
    if config.batch_size < 1 or config.top_k < 1:
        raise DeniroError("--batch-size and --top-k must be positive integers")
    if config.concurrency is not None and config.concurrency < 1:
        raise DeniroError(f"--concurrency must be at least 1, got {config.concurrency}")
    if config.cpus_per_worker <= 0:
        raise DeniroError(f"--cpus-per-worker must be positive, got {config.cpus_per_worker}")
    import_pyarrow()
    if config.ray:
        import_ray()


def import_pyarrow():
    try:
        import pyarrow
    except ImportError as exc:
        raise DeniroError('the batch command reads and writes parquet with pyarrow, which is not '
                          'installed; pip install "deniro[batch]" (or "deniro[ray]")') from exc
    return pyarrow


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the data extra has no ray.data)
    except ImportError as exc:
        raise DeniroError('--ray needs Ray Data, which is not installed; pip install "deniro[ray]", '
                          'or leave out --ray/--concurrency/--address to fill in this process') from exc
    return ray


# ---------------------------------------------------------------------- input and checks
def read_input(path: Path, column: str):
    """The input as a pyarrow Table with `column` present and non-empty."""
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    if not path.exists():
        raise DeniroError(f"--input {path} does not exist; pass a .parquet file, a folder of .parquet "
                          f"files, or a .txt file with one text per line")
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        lines = [line.rstrip("\n") for line in path.open(encoding="utf-8")]
        table = pa.table({column: [line for line in lines if line.strip()]})
    else:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DeniroError(f"--input {path} is not readable as parquet ({exc}); pass a .parquet file, "
                              f"a folder of them, or a .txt file with one text per line") from exc
    if column not in table.column_names:
        raise DeniroError(f"--input {path} has no column {column!r} (it has: "
                          f"{', '.join(table.column_names)}); pass --column with the text column")
    if table.num_rows == 0:
        raise DeniroError(f"--input {path} has no rows; nothing to fill")
    return table


def check_texts(texts: list, config: BatchConfig) -> None:
    """Every row must be a non-empty string with the model's mask token: fail before any work."""
    from .artifact import load_manifest
    from .models import DEFAULT_MODEL_DIR

    mask = load_manifest(config.model or DEFAULT_MODEL_DIR).mask_token
    not_text = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if not_text:
        raise DeniroError(f"{len(not_text)} of {len(texts)} rows of column {config.column!r} are empty or "
                          f"not text (rows {_rows(not_text)}); drop or fill those rows first")
    no_mask = [i for i, t in enumerate(texts) if mask not in t]
    if no_mask:
        hint = (f" (the mask token is case-sensitive: write {mask})"
                if any(mask.lower() in texts[i].lower() for i in no_mask) else "")
        raise DeniroError(f"{len(no_mask)} of {len(texts)} rows of column {config.column!r} have no {mask} "
                          f"(rows {_rows(no_mask)}; first: {texts[no_mask[0]][:60]!r}){hint}; put {mask} "
                          f"where a word should be predicted in every row, or filter those rows out first")


def _rows(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:SHOWN_ROWS])
    return shown + (", ..." if len(indices) > SHOWN_ROWS else "")


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise DeniroError(f"--output {output} is a file; pass a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DeniroError(f"--output {output} exists and is not empty; pass another folder or --overwrite")


# ---------------------------------------------------------------------- fill
def fill_in_process(table, config: BatchConfig):
    """Fill in this process, `batch_size` rows at a time, with a progress bar."""
    import pyarrow as pa

    from .ray_data import FillMaskBatch

    spec = config.spec()
    worker = FillMaskBatch(spec.model, spec.device, spec.precision, threads=None, top_k=spec.top_k,
                           column=spec.column, truncation=spec.truncation)
    parts, start = [], 0
    with _progress(table.num_rows, "fill") as bar:
        for batch in table.to_batches(max_chunksize=config.batch_size):
            try:
                added = worker.predict(batch.column(config.column).to_pylist())
            except DeniroError as exc:  # its "text i" counts from the batch's first row
                raise DeniroError(f"rows {start}-{start + batch.num_rows - 1}: {exc}") from None
            start += batch.num_rows
            part = pa.Table.from_batches([batch])
            for name, values in added.items():
                part = part.append_column(name, pa.array(values))
            parts.append(part)
            bar.update(batch.num_rows)
    return pa.concat_tables(parts)


def fill_on_ray(table, config: BatchConfig):
    """Fill on a pool of Ray Data actors, blocks of `batch_size` rows, results in input order."""
    ray = import_ray()
    import pyarrow as pa

    from .ray_data import fill_dataset

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        context.enable_progress_bars = False  # one bar (ours, on the driver) instead of one per operator
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # after import: Ray sets it on import
        blocks = [table.slice(i, config.batch_size) for i in range(0, table.num_rows, config.batch_size)]
        dataset = fill_dataset(ray.data.from_arrow(blocks), config.spec(), _pool_size(ray, config),
                               config.batch_size)
        return pa.concat_tables(_collect(dataset, table.num_rows))
    except Exception as exc:  # a DeniroError of a worker arrives wrapped (RayTaskError, UserCodeException)
        refusal = _worker_error(exc)
        if refusal is None:
            raise
        raise refusal from None
    finally:
        if started_here:
            ray.shutdown()


def _pool_size(ray, config: BatchConfig) -> int:
    if config.concurrency is not None:
        return config.concurrency
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // config.cpus_per_worker))


def _collect(dataset, rows: int) -> list:
    parts = []
    with _progress(rows, "fill (ray)") as bar:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(batch)
            bar.update(batch.num_rows)
    return parts


def _worker_error(exc: BaseException) -> DeniroError | None:
    """The DeniroError a Ray worker raised, as one message. Ray Data hands back only its text (a
    RayTaskError(UserCodeException) around the worker's formatted traceback), so it is read from there."""
    found = re.search(r"(?:DeniroError|ArtifactError): (.+)", str(exc))
    if found is None:
        return None
    return DeniroError(f"a Ray worker refused a batch of up to --batch-size rows ({found.group(1).strip()})")


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # core install: no bar, the final log line still reports the rate
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="rows", dynamic_ncols=True)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int) -> None:
        return None


# ---------------------------------------------------------------------- output
def write_atomically(table, output: Path, config: dict) -> None:
    """Write into a hidden sibling folder, then rename it to `output` (replacing it with --overwrite)."""
    import pyarrow.parquet as pq

    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        pq.write_table(table, temp / OUTPUT_FILE)
        (temp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        publish(temp, output)  # output only reached when empty or --overwrite (check_output)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    import sys

    sys.exit(main())
