"""python -m bench ray: deniro_rt on Ray, same machine, same run.

Offline: sentences/s of Ray Data (`FillMaskBatch` actors via deniro_rt.batch.ray.fill_dataset, for
each --pools entry "<actors>x<cpus per actor>") against plain in-process `FillMask.fill` (one
session, all cores), on the IMDB test sentences of one length bucket. Each Ray Data run is end to
end as a user sees it (dataset built from in-memory blocks, actor pool started, results collected
on the driver); the time to the first result batch at the driver is reported next to it. The Ray
actors fill through `fill_arrays` (columns, as `deniro_rt batch` does), the plain row through `fill`
(dicts): its host work is larger, so the Ray rows' ratio to it flatters Ray slightly.

Online: Ray Serve (deniro_rt.serve.ray) with the app's own DynamicBatcher (`--batching app`) and with
`@serve.batch` (`--batching serve`), one replica with all CPUs; two replicas with half the CPUs each
(app batching); and the plain uvicorn server
(`python -m deniro_rt serve`) for reference, at --clients closed-loop clients sending one sentence
per request (bench/load.py's client), rounds interleaved.

Reports: <out>/ray.json (header with hardware and versions, every row), ray.md, ray.png.
  python -m bench ray                              # -> bench/results/<machine>-<date>/
  python -m bench ray --quick --out /tmp/ray       # seconds: checks the harness
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from deniro_rt.cli import check_least, config_parser, run_main, setup_logging
from deniro_rt.errors import DeniroError

from .config import QuickDefaults, dated_results_dir, default_dataset, int_list
from .figures import save_figure

log = logging.getLogger("bench.ray")
QUICK = {
    "sentences": 96,
    "repeats": 1,
    "seconds": 1.0,
    "requests": 60,
    "warmup": 5,
    "clients": "8",
    "rounds": 1,
    "batch_size": 16,
}


@dataclass
class RayBenchConfig(QuickDefaults):
    model: str | None = None  # artifact folder; default: deniro_rt's shipped model
    precision: str | None = None  # default: the runtime's choice (providers.PRECISION_HELP)
    dataset: str = field(default_factory=default_dataset)
    split: str = "test"
    length: int = 64  # sentence bucket: texts of 3/4 L..L tokens
    sentences: int = 4000  # offline: sentences per run
    seed: int = 0
    batch_size: int = 256  # offline: rows per block / map_batches batch / in-process fill call
    pools: str = "2x1,1x2"  # offline Ray Data pools: <actors>x<cpus per actor>
    repeats: int = 2  # offline: timed runs per engine
    clients: str = "32"  # online: concurrent clients
    rounds: int = 2  # online: interleaved rounds per server
    seconds: float = 4.0  # online: per cell and round at most
    requests: int = 3000  # online: per cell and round at most
    warmup: int = 50  # online: untimed requests per cell
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    out: str = field(default_factory=lambda: str(dated_results_dir()))  # never a committed results folder
    quick: bool = False
    QUICK: ClassVar[dict] = QUICK

    def pool_list(self) -> list[tuple[int, float]]:
        try:
            pools = [(int(a), float(c)) for a, c in (p.split("x") for p in self.pools.split(",") if p.strip())]
        except ValueError as exc:
            raise DeniroError(f"--pools takes <actors>x<cpus>,... e.g. 2x1,1x2; got {self.pools!r}") from exc
        if not pools or min(min(p) for p in pools) <= 0:
            raise DeniroError(f"--pools needs positive actors and cpus, got {self.pools!r}")
        return pools

    def client_counts(self) -> list[int]:
        return int_list(self.clients, "--clients")

    def check_numbers(self) -> None:
        check_least(self, LEAST, above_zero=("seconds",))


# The least value of each numeric knob
LEAST = dict(
    sentences=1, batch_size=1, repeats=1, rounds=1, requests=1, warmup=0, max_batch_size=1, max_wait_ms=0, max_queue=1,
)  # fmt: skip


# --------------------------------------------------------------------------- offline: Ray Data
def time_plain(texts: list[str], cfg: RayBenchConfig) -> dict:
    """In-process FillMask.fill (dicts), `batch_size` rows a call. (`deniro_rt batch` without Ray calls
    fill_arrays, as the Ray actors do: cheaper host work than this row's.)"""
    from deniro_rt import FillMask

    fm = FillMask(cfg.model, device="cpu", precision=cfg.precision)
    fm.fill(texts[: cfg.batch_size])  # warm-up
    runs, batch_ms = [], []
    for _ in range(cfg.repeats):
        started = time.perf_counter()
        for i in range(0, len(texts), cfg.batch_size):
            t0 = time.perf_counter()
            fm.fill(texts[i : i + cfg.batch_size])
            batch_ms.append((time.perf_counter() - t0) * 1000)
        runs.append(len(texts) / (time.perf_counter() - started))
    return {**offline_row("plain fill (in-process, all cores)", runs, batch_ms, None), "precision": fm.precision}


def time_ray_data(texts: list[str], cfg: RayBenchConfig, actors: int, cpus: float) -> dict:
    """End to end, pool start-up included, and the time to the first result batch at the driver. (Rows
    per second between the first and the last batch would overstate throughput: the driver receives
    results in bursts, after the actors did much of the work.)"""
    import pyarrow as pa
    import ray

    from deniro_rt.batch.ray import FillSpec, fill_dataset

    spec = FillSpec(model=cfg.model, precision=cfg.precision, cpus_per_worker=cpus)
    table = pa.table({"text": texts})

    def run(rows: int) -> tuple[float, list[tuple[float, int]]]:
        blocks = [table.slice(i, cfg.batch_size) for i in range(0, rows, cfg.batch_size)]
        started, arrivals = time.perf_counter(), []  # (seconds since start, rows) per result batch
        for batch in fill_dataset(ray.data.from_arrow(blocks), spec, actors, cfg.batch_size).iter_batches(
            batch_format="pyarrow", batch_size=None
        ):
            arrivals.append((time.perf_counter() - started, batch.num_rows))
        return time.perf_counter() - started, arrivals

    run(cfg.batch_size)  # warm-up: worker processes, imports
    timed = [run(len(texts)) for _ in range(cfg.repeats)]
    return offline_row(
        f"Ray Data {actors} actor(s) x {cpus:g} CPU",
        [len(texts) / wall for wall, _ in timed],
        [],
        float(np.median([arrivals[0][0] for _, arrivals in timed])),
    )


def offline_row(engine: str, runs: list[float], batch_ms: list[float], first_batch_s: float | None) -> dict:
    row = {
        "engine": engine,
        "sentences_per_s": float(np.median(runs)),
        "runs_sentences_per_s": runs,
        "first_batch_s": first_batch_s,
    }
    row.update({f"batch_p{q}_ms": float(np.percentile(batch_ms, q)) if batch_ms else None for q in (50, 90, 99)})
    log.info("%-40s %8.1f sentences/s %s", engine, row["sentences_per_s"], [round(r, 1) for r in runs])
    return row


# --------------------------------------------------------------------------- online: Ray Serve
def serve_rows(texts: list[str], cfg: RayBenchConfig) -> list[dict]:
    """Ray Serve variants (batching mode x replicas) and the plain server, rounds interleaved."""
    from ray import serve

    from deniro_rt.serve.ray import start

    from .load import ServerProcess, free_port, start_server, stop_server, summarize

    port, cpus = free_port(), float(os.cpu_count() or 1)
    variants = [("app", 1, cpus), ("serve", 1, cpus), ("app", 2, cpus / 2)]  # (batching, replicas, cpus each)
    load_cfg = load_config(cfg)
    plain = start_server("batched", load_cfg, None)
    cells: dict[tuple[str, int], list] = {}
    try:
        for _ in range(cfg.rounds):
            for batching, replicas, each in variants:
                name = f"ray-serve-{batching}-{replicas}x{each:g}cpu"
                url = start(serve_config(cfg, name, batching, replicas, each, port))
                measure_all(ServerProcess(name, None, url.rstrip("/"), {}), texts, cfg, load_cfg, cells)
                serve.delete(name)
            measure_all(plain, texts, cfg, load_cfg, cells)
    finally:
        stop_server(plain)
    rows = [summarize(name, clients, c) for (name, clients), c in cells.items()]
    for row in rows:  # /metrics comes from whichever replica answers: per-deployment means need one replica
        row["mean_batch"] = (
            None if row["server"].startswith("ray-serve") and "-1x" not in row["server"] else row["mean_batch"]
        )
    return rows


def load_config(cfg: RayBenchConfig):
    """bench.load's settings for the measured cells, from this benchmark's."""
    from .load import LoadConfig

    return LoadConfig(
        model=cfg.model,
        precision=cfg.precision,
        seconds=cfg.seconds,
        requests=cfg.requests,
        warmup=cfg.warmup,
        max_batch_size=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
    )


def serve_config(cfg: RayBenchConfig, name: str, batching: str, replicas: int, each: float, port: int):
    """One Ray Serve deployment: `replicas` replicas of `each` CPUs, batching in the app or in Serve."""
    from deniro_rt.serve.ray import RayServeConfig

    return RayServeConfig(
        model=cfg.model,
        precision=cfg.precision,
        num_replicas=replicas,
        num_cpus=each,
        batching=batching,
        max_batch_size=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        port=port,
        name=name,
    )


def measure_all(server, texts: list[str], cfg: RayBenchConfig, load_cfg, cells: dict) -> None:
    from .load import encode_requests, measure

    requests = encode_requests(texts, int(server.url.rsplit(":", 1)[1]))
    for clients in cfg.client_counts():
        cells.setdefault((server.name, clients), []).append(measure(server, requests, clients, load_cfg))


# --------------------------------------------------------------------------- run and reports
def main(cfg: RayBenchConfig) -> int:
    import ray

    from deniro_rt.models import DEFAULT_MODEL_DIR

    from . import report
    from .load import load_sentences

    pools = cfg.pool_list()
    cfg.client_counts(), cfg.check_numbers()  # bad lists and numbers fail before anything starts
    report.check_out(Path(cfg.out))
    texts = load_sentences(cfg, Path(cfg.model) if cfg.model else DEFAULT_MODEL_DIR)
    texts = (texts * math.ceil(cfg.sentences / max(1, len(texts))))[: cfg.sentences]
    result = {
        "header": report.header("cpu", "python -m bench ray"),
        "config": asdict(cfg),
        "ray": ray.__version__,
        "sentences": len(texts),
        "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
    }
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset start/finish lines
        result["offline"] = [time_plain(texts, cfg)] + [time_ray_data(texts, cfg, a, c) for a, c in pools]
        result["online"] = serve_rows(texts[:500], cfg)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    result["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]
    write_reports(result, Path(cfg.out))
    return 0


def write_reports(result: dict, out: Path) -> None:
    from .report import write_files

    write_files(result, out, "ray", markdown, plot)


def markdown(result: dict) -> str:
    h = result["header"]
    lines = [
        f"# deniro_rt on Ray — {h['machine']}, {h['created']}",
        "",
        f"CPU: {h['hardware']['cpu']} ({h['hardware']['usable_cores']} usable cores); ray {result['ray']}; "
        f"versions: {json.dumps(h['versions'])}; load average {result['load_average']}; "
        f"precision {result['offline'][0]['precision']} (every engine)",
        "",
        *offline_table(result),
        "",
        *online_table(result),
    ]
    return "\n".join(lines) + "\n"


def offline_table(result: dict) -> list[str]:
    cfg, plain = result["config"], result["offline"][0]["sentences_per_s"]
    lines = [
        f"## Offline: {result['sentences']} IMDB test sentences ({cfg['length']}-token bucket), "
        f"{cfg['batch_size']} rows per batch, median of {cfg['repeats']} runs",
        "",
        "End to end: from building the dataset to the last row at the driver (Ray: actor pool start-up "
        "included); first batch: seconds until the first result batch reached the driver.",
        "",
        "| engine | sentences/s | vs plain fill | per run | first batch s | batch p50 / p90 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["offline"]:
        pct = " / ".join(_f(r[f"batch_p{q}_ms"]) for q in (50, 90, 99))
        runs = ", ".join(f"{v:,.0f}" for v in r["runs_sentences_per_s"])
        lines.append(
            f"| {r['engine']} | {r['sentences_per_s']:,.1f} | {r['sentences_per_s'] / plain:.2f}× | "
            f"{runs} | {_f(r['first_batch_s'])} | {pct} |"
        )
    return lines


def online_table(result: dict) -> list[str]:
    cfg = result["config"]
    lines = [
        f"## Online: one sentence per request, closed loop, {cfg['rounds']} interleaved rounds of at "
        f"most {cfg['seconds']} s / {cfg['requests']} requests per cell",
        "",
        "| server | clients | sentences/s | p50 ms | p90 ms | p99 ms | failed | 503 | mean batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["online"]:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['sentences_per_s']:,.1f} | {_f(r['p50_ms'])} | "
            f"{_f(r['p90_ms'])} | {_f(r['p99_ms'])} | {r['failed']} | {r['rejected_503']} | "
            f"{_f(r['mean_batch'])} |"
        )
    return lines


def _f(value) -> str:
    return "—" if value is None else f"{value:,.1f}"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    offline = result["offline"]
    left.barh([r["engine"] for r in offline], [r["sentences_per_s"] for r in offline], color="tab:blue")
    left.set_xlabel("sentences/s (offline, end to end)")
    online = result["online"]
    right.barh(
        [f"{r['server']} @{r['clients']}" for r in online], [r["sentences_per_s"] for r in online], color="tab:orange"
    )
    right.set_xlabel("sentences/s (HTTP, one sentence per request)")
    fig.suptitle(f"deniro_rt on Ray {result['ray']} — {result['header']['hardware']['cpu']}")
    fig.tight_layout()
    save_figure(fig, path)


HELP = {
    "model": "artifact folder (default: deniro_rt's shipped model)",
    "precision": "bf16 | fp32 | int8 (default: the runtime's choice)",
    "dataset": "folder of <split>.parquet files, or a hub dataset id",
    "split": "split the sentences are cut from",
    "length": "sentence bucket: texts of 3/4 L..L tokens",
    "sentences": "offline: sentences per timed run (cycled if the bucket has fewer)",
    "seed": "sentence choice and masked word",
    "batch_size": "offline: rows per block / map_batches batch / in-process fill call",
    "pools": "offline Ray Data actor pools, comma-separated <actors>x<cpus per actor>",
    "repeats": "offline: timed runs per engine (median reported)",
    "clients": "online: comma-separated concurrent client counts",
    "rounds": "online: interleaved rounds per server",
    "seconds": "online: at most this long per cell and round",
    "requests": "online: at most this many requests per cell and round",
    "warmup": "online: untimed requests before each cell",
    "max_batch_size": "servers' --max-batch-size",
    "max_wait_ms": "servers' --max-wait-ms",
    "max_queue": "servers' --max-queue",
    "out": "report folder (default: bench/results/<machine>-<date>/, as for python -m bench all)",
    "quick": "small counts: checks the harness, not the speed",
}


def parse_args(argv: list[str] | None) -> RayBenchConfig:
    types = {"model": str, "precision": str}
    parser = config_parser(RayBenchConfig(), "python -m bench ray", __doc__, HELP, types)
    return RayBenchConfig(**vars(parser.parse_args(argv)))


def cli(argv: list[str] | None = None) -> int:
    setup_logging(ours=("bench.ray",))
    config = parse_args(argv)
    from .report import INTERRUPTED

    return run_main(lambda: main(config), interrupted=INTERRUPTED)
