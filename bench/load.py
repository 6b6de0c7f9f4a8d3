"""python -m bench load: HTTP load test of `python -m deniro_rt serve` on 127.0.0.1.

Starts each server as its own process, then for each client count runs a bounded closed loop: every
client holds one keep-alive HTTP/1.1 connection (raw asyncio streams; httpx's ~1 ms of client CPU
per request made the load generator itself the bottleneck on 2 cores) and POSTs one IMDB test
sentence (`{"inputs": sentence}`), reads the whole answer and sends the next, until --requests
requests or --seconds have passed. Reports sentences/s, latency p50/p90/p99, failures (503 counted
apart), the server's batch sizes (mean and histogram, from /metrics) and the cores the load generator
itself kept busy (`client_cpu_cores`: it shares the machine's cores with the server).

Servers:
  batched      deniro_rt serve --max-batch-size B (dynamic batching)
  unbatched    the same server with --max-batch-size 1
  before-batched, before-unbatched
               the same two from another checkout (--baseline, e.g. `git worktree add /tmp/old HEAD~3`),
               measured in the same run: before/after ratios on the same shared machine
  hf-pipeline  transformers pipeline("fill-mask") behind the same HTTP layer and batcher
               (--torch-model; default: a random-init DistilBertForMaskedLM of the artifact's own
               config.json and tokenizer, i.e. the same shape as the deniro_rt model: speed only)

Examples:
  python -m bench load                                      # 1, 8, 32, 128 clients, three servers
  python -m bench load --clients 32 --servers batched,unbatched --seconds 5
  python -m bench load --quick --out /tmp/load              # seconds: checks the harness
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from deniro_rt.cli import check_least, config_parser, run_main, setup_logging
from deniro_rt.errors import DeniroError
from deniro_rt.providers import DEVICES

from .config import LOCAL_IMDB, REPO, QuickDefaults, dated_results_dir, default_dataset, int_list
from .figures import save_figure

log = logging.getLogger("bench.load")
SERVERS = ("batched", "unbatched", "hf-pipeline", "before-batched", "before-unbatched")
QUICK = {"clients": "1,8", "rounds": 1, "requests": 40, "seconds": 2.0, "warmup": 5, "sentences": 50}


@dataclass
class LoadConfig(QuickDefaults):
    model: str | None = None  # artifact folder; default: deniro_rt's shipped model
    torch_model: str | None = None  # for hf-pipeline; default: random init of the artifact's config
    servers: str = ",".join(SERVERS[:3])
    baseline: str | None = None  # another checkout whose deniro_rt serve runs as before-*
    clients: str = "1,8,32,128"  # concurrent clients per level
    rounds: int = 3  # every (server, clients) cell is measured once per round, interleaved
    requests: int = 2000  # requests per cell and round at most
    seconds: float = 3.0  # per cell and round at most
    warmup: int = 100  # untimed requests before each level
    length: int = 32  # sentence bucket: texts of 3/4 L..L tokens (24..32: one IMDB sentence)
    sentences: int = 500  # distinct sentences, cycled
    dataset: str = field(default_factory=default_dataset)
    split: str = "test"
    seed: int = 0
    max_batch_size: int = 64
    max_wait_ms: float | None = None  # default: each server's own
    max_queue: int = 1024
    precision: str | None = None  # deniro_rt graph; default: the runtime's choice
    device: str = "auto"  # deniro_rt servers' --device (hf-pipeline stays on the CPU)
    threads: int | None = None  # intra-op threads of every server (ORT / torch); default: serve's rule
    out: str = field(default_factory=lambda: str(dated_results_dir()))  # never a committed results folder
    quick: bool = False
    QUICK: ClassVar[dict] = QUICK

    def client_counts(self) -> list[int]:
        return int_list(self.clients, "--clients")

    def check_numbers(self) -> None:
        check_least(
            self,
            dict(rounds=1, requests=1, warmup=0, sentences=1, max_batch_size=1, max_wait_ms=0, max_queue=1, threads=1),
            above_zero=("seconds",),
        )

    def server_names(self) -> list[str]:
        names = [s.strip() for s in self.servers.split(",") if s.strip()]
        bad = [s for s in names if s not in SERVERS]
        if bad or not names:
            raise DeniroError(f"--servers: unknown {bad}; choose from {', '.join(SERVERS)}")
        if any(n.startswith("before-") for n in names) and not self.baseline:
            raise DeniroError("--servers before-*: pass --baseline CHECKOUT (e.g. a git worktree of an older commit)")
        return names


# --------------------------------------------------------------------------- the HF pipeline backend
class PipelineFill:
    """transformers' fill-mask pipeline with FillMask's `fill` signature, for the same HTTP layer."""

    precision, provider = "fp32", "torch-cpu"

    def __init__(self, torch_model: str):
        from transformers import pipeline

        self.pipe = pipeline("fill-mask", model=torch_model, device="cpu")
        self.mask_token = self.pipe.tokenizer.mask_token
        self.model_name = f"hf-pipeline:{torch_model}"

    def fill(
        self,
        texts: list[str],
        top_k: int = 5,
        targets=None,
        joint: bool = False,
        truncation: bool = False,
        batch_size: int = 64,
    ):
        if joint:
            raise DeniroError("joint is not supported by the hf-pipeline backend")
        out = self.pipe(
            list(texts),
            top_k=top_k,
            targets=targets,
            batch_size=batch_size,
            tokenizer_kwargs={"truncation": truncation},
        )
        return [out] if len(texts) == 1 else out  # the pipeline unwraps a list of one


def random_torch_model(artifact: Path, folder: Path) -> Path:
    """A random-init DistilBertForMaskedLM of the artifact's config, with its tokenizer (seeded)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(artifact))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (artifact / name).is_file():
            shutil.copy(artifact / name, folder / name)
    return folder


def serve_pipeline(argv: list[str]) -> int:
    """python -m bench.load TORCH_MODEL PORT MAX_BATCH MAX_WAIT_MS MAX_QUEUE THREADS: the hf-pipeline
    server (THREADS 0: the same default as deniro_rt serve)."""
    import torch

    from deniro_rt.serve import ServeConfig
    from deniro_rt.serve.config import model_threads
    from deniro_rt.serve.server import main

    torch_model, port, batch, wait, queue, threads = argv
    torch.set_num_threads(model_threads(int(threads) or None))  # the rule deniro_rt serve uses
    setup_logging(logging.WARNING)
    config = ServeConfig(
        port=int(port), max_batch_size=int(batch), max_wait_ms=float(wait), max_queue=int(queue), log_level="warning"
    )
    return run_main(lambda: main(config, fill_mask=PipelineFill(torch_model)))


# --------------------------------------------------------------------------- server processes
@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen
    url: str
    health: dict


def free_port() -> int:
    """A port free now; another process may take it before the server binds (start_server retries)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(name: str, cfg: LoadConfig, port: int, torch_model: Path | None) -> list[str]:
    from deniro_rt.serve.config import ServeConfig

    batch = 1 if name.endswith("unbatched") else cfg.max_batch_size
    if name == "hf-pipeline":
        return [
            sys.executable,
            "-m",
            "bench.load",
            str(torch_model),
            str(port),
            str(batch),
            str(cfg.max_wait_ms if cfg.max_wait_ms is not None else ServeConfig.max_wait_ms),
            str(cfg.max_queue),
            str(cfg.threads or 0),
        ]
    cmd = [
        sys.executable,
        "-m",
        "deniro_rt",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch-size",
        str(batch),
        "--max-queue",
        str(cfg.max_queue),
        "--log-level",
        "warning",
    ]
    return (
        cmd
        + (["--max-wait-ms", str(cfg.max_wait_ms)] if cfg.max_wait_ms is not None else [])
        + (["--model", cfg.model] if cfg.model else [])
        + (["--precision", cfg.precision] if cfg.precision else [])
        + ["--device", cfg.device]
        + (["--threads", str(cfg.threads)] if cfg.threads else [])
    )


def start_server(name: str, cfg: LoadConfig, torch_model: Path | None, tries: int = 3) -> ServerProcess:
    """Start and wait until healthy; a server that exits at once (its port taken meanwhile) is retried."""
    for attempt in range(tries):
        try:
            return start_once(name, cfg, torch_model)
        except DeniroError:
            if attempt == tries - 1:
                raise
            log.warning("the %s server exited early; retrying on another port", name)


def start_once(name: str, cfg: LoadConfig, torch_model: Path | None) -> ServerProcess:
    import httpx

    port = free_port()
    cwd = cfg.baseline if name.startswith("before-") else REPO
    proc = subprocess.Popen(server_command(name, cfg, port, torch_model), cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeniroError(f"the {name} server exited with {proc.returncode} before it was healthy")
        try:
            health = httpx.get(url + "/health", timeout=2)
            if health.status_code == 200:
                return ServerProcess(name, proc, url, health.json())
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise DeniroError(f"the {name} server was not healthy after 120 s")


def stop_server(server: ServerProcess) -> int:
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait()


# --------------------------------------------------------------------------- the load
@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, answered with 200
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", "error", ...
    sent: int = 0
    client_cpu_s: float = 0.0  # CPU seconds the load generator itself took (it shares the cores with the server)


def encode_requests(texts: list[str], port: int) -> list[bytes]:
    """Each sentence as a complete HTTP/1.1 request, built once (the timed loop only sends bytes)."""
    out = []
    for text in texts:
        body = json.dumps({"inputs": text}).encode()
        head = (
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def exchange(conn: list, port: int, request: bytes) -> str:
    """Send one request on a keep-alive connection (opened on first use); the status code."""
    if not conn:
        conn[:] = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = conn
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    if re.search(rb"(?i)\r\nconnection: *close", head):
        writer.close()
        conn.clear()
    return status


async def client_loop(port: int, requests: list[bytes], tally: Tally, limit: int, deadline: float) -> None:
    """One closed-loop client on its own connection: send, read the whole answer, send the next."""
    conn: list = []
    while tally.sent < limit and time.perf_counter() < deadline:
        request = requests[tally.sent % len(requests)]
        tally.sent += 1
        started = time.perf_counter()
        try:
            status = await exchange(conn, port, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:  # a dropped request: report it
            status = f"error:{type(exc).__name__}"
            conn.clear()
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status == "200":
            tally.latencies.append(time.perf_counter() - started)
    if conn:
        conn[1].close()


async def drive(port: int, requests: list[bytes], clients: int, limit: int, seconds: float) -> tuple[Tally, float]:
    """`clients` concurrent closed loops until `limit` requests were sent or `seconds` passed."""
    tally = Tally()
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client_loop(port, requests, tally, limit, started + seconds) for _ in range(clients)))
    tally.client_cpu_s = time.process_time() - cpu
    return tally, time.perf_counter() - started


def run_async(coro):
    """On uvloop when installed (the serve extra brings it): the less CPU the client takes from
    the 2 cores it shares with the server, the more the numbers say about the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def batch_stats(metrics: str) -> tuple[float, float, dict[str, float]]:
    """(texts filled, fill calls, fill calls per batch-size bucket, cumulative) so far, from /metrics."""
    total = float(re.search(r"^deniro_batch_size_sum (\S+)$", metrics, re.M).group(1))
    calls = float(re.search(r"^deniro_batch_size_count (\S+)$", metrics, re.M).group(1))
    buckets = {
        f"{float(le):g}" if le != "+Inf" else le: float(n)
        for le, n in re.findall(r'^deniro_batch_size_bucket\{le="([^"]+)"\} (\S+)$', metrics, re.M)
    }
    return total, calls, buckets


@dataclass
class Cell:
    """One timed run of one server at one client count."""

    tally: Tally
    elapsed: float
    texts: float  # texts the server filled meanwhile
    calls: float  # fill calls it made meanwhile
    buckets: dict[str, float]  # fill calls per batch-size bucket (cumulative, "le") meanwhile


def measure(server: ServerProcess, requests: list[bytes], clients: int, cfg: LoadConfig) -> Cell:
    import httpx

    port = int(server.url.rsplit(":", 1)[1])
    run_async(drive(port, requests, clients, cfg.warmup, cfg.seconds))
    before = batch_stats(httpx.get(server.url + "/metrics").text)
    tally, elapsed = run_async(drive(port, requests, clients, cfg.requests, cfg.seconds))
    after = batch_stats(httpx.get(server.url + "/metrics").text)
    log.info(
        "%-12s %4d clients: %7.1f sentences/s, %s",
        server.name,
        clients,
        tally.statuses.get("200", 0) / elapsed,
        tally.statuses,
    )
    buckets = {le: n - before[2].get(le, 0) for le, n in after[2].items()}
    return Cell(tally, elapsed, after[0] - before[0], after[1] - before[1], buckets)


def summarize(name: str, clients: int, cells: list[Cell]) -> dict:
    """One row from every round of (server, clients): counts summed, latencies pooled."""
    statuses: dict[str, int] = {}
    for cell in cells:
        for status, n in cell.tally.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    lat = np.concatenate([np.array(c.tally.latencies) for c in cells]) * 1000  # [answered] ms
    sent, ok, elapsed = sum(c.tally.sent for c in cells), statuses.get("200", 0), sum(c.elapsed for c in cells)
    row = {
        "server": name,
        "clients": clients,
        "requests": sent,
        "ok": ok,
        "rejected_503": statuses.get("503", 0),
        "failed": sent - ok - statuses.get("503", 0),
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "sentences_per_s": ok / elapsed,
        "per_round_sentences_per_s": [c.tally.statuses.get("200", 0) / c.elapsed for c in cells],
        # cores the load generator kept busy: near the usable cores, it (not the server) is the limit
        "client_cpu_cores": sum(c.tally.client_cpu_s for c in cells) / elapsed,
        "mean_batch": sum(c.texts for c in cells) / max(1, sum(c.calls for c in cells)),
        "batch_histogram": histogram(cells),
    }
    row.update({f"p{q}_ms": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)})
    return row


def histogram(cells: list[Cell]) -> dict[str, int]:
    """Fill calls by batch size ("<=8": batches of 5..8 texts), summed over rounds, not cumulative."""
    cumulative = {le: sum(c.buckets.get(le, 0) for c in cells) for le in cells[0].buckets}
    out, below, low = {}, 0.0, 0
    for le, n in cumulative.items():
        label = f"{low + 1}-{le}" if le != "+Inf" else f">{low}"
        out[label] = int(n - below)
        below, low = n, int(float(le)) if le != "+Inf" else low
    return out


# --------------------------------------------------------------------------- workload and run
def load_sentences(cfg: LoadConfig, artifact: Path) -> list[str]:
    from deniro_rt.artifact import load_manifest
    from deniro_rt.data import load_text_splits

    from .config import MODEL_CARD_PROMPT
    from .workload import build_workload, load_tokenizer

    manifest = load_manifest(artifact)
    reviews = load_text_splits(cfg.dataset, [cfg.split])[cfg.split]
    workload = build_workload(
        reviews, load_tokenizer(artifact), [cfg.length], cfg.sentences, cfg.seed, manifest.mask_token, MODEL_CARD_PROMPT
    )
    return workload.buckets[cfg.length]


def run_all(names: list[str], cfg: LoadConfig, texts: list[str], torch_model: Path | None) -> dict:
    """Every server up at once (idle ones cost ~nothing), then rounds x client counts x servers
    interleaved, so that a change in the shared machine's load hits every server alike."""
    servers: list[ServerProcess] = []
    cells: dict[tuple[str, int], list[Cell]] = {}
    try:
        for name in names:
            servers.append(start_server(name, cfg, torch_model))
        for _ in range(cfg.rounds):
            for clients in cfg.client_counts():
                for server in servers:
                    requests = encode_requests(texts, int(server.url.rsplit(":", 1)[1]))
                    cells.setdefault((server.name, clients), []).append(measure(server, requests, clients, cfg))
    finally:
        codes = {server.name: stop_server(server) for server in servers}
    if any(codes.values()):
        raise DeniroError(f"servers exited with {codes} after SIGTERM (expected 0)")
    return {
        "rows": [summarize(name, clients, c) for (name, clients), c in cells.items()],
        "servers": {server.name: server.health for server in servers},
    }


def main(cfg: LoadConfig) -> int:
    from deniro_rt.models import DEFAULT_MODEL_DIR

    from . import report

    names, _ = cfg.server_names(), cfg.client_counts()  # bad lists and numbers fail before any server starts
    cfg.check_numbers()
    report.check_out(Path(cfg.out))
    artifact = Path(cfg.model) if cfg.model else DEFAULT_MODEL_DIR
    texts = load_sentences(cfg, artifact)
    result = {
        "header": report.header("cpu", "python -m bench load"),
        "config": asdict(cfg),
        "sentences": {"count": len(texts), "length_bucket": cfg.length},
        "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
    }
    with tempfile.TemporaryDirectory(prefix="deniro-load-") as tmp:
        torch_model = None
        if "hf-pipeline" in names:
            torch_model = Path(cfg.torch_model) if cfg.torch_model else random_torch_model(artifact, Path(tmp))
            result["torch_model"] = cfg.torch_model or f"random init of {artifact / 'config.json'} (seed 0)"
        result.update(run_all(names, cfg, texts, torch_model))
    result["header"]["device"] = served_device(result["servers"])  # --device auto may have chosen CUDA
    result["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]
    result["rows"].sort(key=lambda r: (names.index(r["server"]), r["clients"]))
    result["ratios"] = ratios(result["rows"])
    write_reports(result, Path(cfg.out))
    return 0


def served_device(servers: dict[str, dict]) -> str:
    """cuda when a deniro_rt server's /health names the CUDA provider, else cpu (hf-pipeline stays on the CPU)."""
    from deniro_rt.providers import CUDA

    return "cuda" if any(health.get("provider") == CUDA for health in servers.values()) else "cpu"


def ratios(rows: list[dict]) -> list[dict]:
    """Batched vs unbatched and vs hf-pipeline throughput, per client count."""
    by = {(r["server"], r["clients"]): r["sentences_per_s"] for r in rows}
    out = []
    for (server, clients), value in by.items():
        if server != "batched":
            continue
        entry = {"clients": clients}
        for other in ("unbatched", "hf-pipeline", "before-batched"):
            if by.get((other, clients)):
                entry[f"vs_{other}"] = value / by[(other, clients)]
        out.append(entry)
    return out


# --------------------------------------------------------------------------- reports
def write_reports(result: dict, out: Path) -> None:
    from .report import write_files

    write_files(result, out, "load", markdown, plot)


def markdown(result: dict) -> str:
    h = result["header"]
    lines = [
        f"# deniro serve load test — {h['machine']}, {h['created']}",
        "",
        f"CPU: {h['hardware']['cpu']} ({h['hardware']['usable_cores']} usable cores); "
        f"versions: {json.dumps(h['versions'])}",
        "",
        *_setup_paragraphs(result),
        *_rows_table(result),
        *_ratios_table(result),
        *_histogram_table(result),
    ]
    return "\n".join(lines) + "\n"


def _setup_paragraphs(result: dict) -> list[str]:
    cfg = result["config"]
    return [
        f"One IMDB test sentence per request ({result['sentences']['count']} sentences of the "
        f"{cfg['length']}-token bucket), closed loop; {cfg['rounds']} rounds, servers interleaved, each "
        f"cell at most {cfg['requests']} requests or {cfg['seconds']} s per round after {cfg['warmup']} "
        f"warm-up requests (latencies pooled over rounds); batched server: "
        f"--max-batch-size {cfg['max_batch_size']} --max-wait-ms {cfg['max_wait_ms']} "
        f"--max-queue {cfg['max_queue']}. hf-pipeline model: {result.get('torch_model', '-')}.",
        "",
        f"deniro_rt servers: {_served(result)}. Server intra-op threads: "
        f"{cfg['threads'] or 'serve default (one per usable core)'}. Load average (1/5/15 min) "
        f"of the shared machine: {result['load_average']['start']} at start, "
        f"{result['load_average']['end']} at the end.",
        "",
    ]


def _rows_table(result: dict) -> list[str]:
    lines = [
        "| server | clients | sentences/s | per round | p50 ms | p90 ms | p99 ms | mean batch | ok | 503 | failed "
        "| client cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rounds = " / ".join(f"{v:.0f}" for v in r["per_round_sentences_per_s"])
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['sentences_per_s']:.1f} | {rounds} | {_f(r['p50_ms'])} | "
            f"{_f(r['p90_ms'])} | {_f(r['p99_ms'])} | {r['mean_batch']:.1f} | {r['ok']} | "
            f"{r['rejected_503']} | {r['failed']} | {r.get('client_cpu_cores', float('nan')):.2f} |"
        )
    return lines


def _ratios_table(result: dict) -> list[str]:
    others = ("unbatched", "hf-pipeline", "before-batched")
    lines = ["", "| clients | " + " | ".join(f"batched vs {o}" for o in others) + " |", "|---|---|---|---|"]
    for r in result["ratios"]:
        lines.append(f"| {r['clients']} | " + " | ".join(_x(r.get(f"vs_{o}")) for o in others) + " |")
    return lines


def _histogram_table(result: dict) -> list[str]:
    labels = list(result["rows"][0]["batch_histogram"])
    lines = [
        "",
        "Fill calls by batch size (texts per call), all rounds:",
        "",
        "| server | clients | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['server']} | {r['clients']} | " + " | ".join(str(v) for v in r["batch_histogram"].values()) + " |"
        )
    return lines


def _served(result: dict) -> str:
    health = next((h for name, h in result["servers"].items() if name != "hf-pipeline"), None)
    return "-" if health is None else f"{health['model']} ({health['precision']}, {health['provider']})"


def _f(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}×"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (
        ("sentences_per_s", "throughput (sentences/s, higher is better)"),
        ("p99_ms", "latency p99 (solid) and p50 (dashed) (ms, lower is better)"),
    )
    for ax, (key, title) in zip(axes, panels):
        for name in dict.fromkeys(r["server"] for r in result["rows"]):
            rows = [r for r in result["rows"] if r["server"] == name]
            line = ax.plot([r["clients"] for r in rows], [r[key] for r in rows], marker="o", label=name)
            if key == "p99_ms":
                ax.plot([r["clients"] for r in rows], [r["p50_ms"] for r in rows], ls="--", color=line[0].get_color())
        clients = sorted({r["clients"] for r in result["rows"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"deniro_rt serve over HTTP, 127.0.0.1 — {result['header']['hardware']['cpu']}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- command line
HELP = {
    "model": "artifact folder (default: deniro_rt's shipped model)",
    "torch_model": "save_pretrained folder for hf-pipeline (default: random init of the artifact's "
    "config.json with its tokenizer: same shape, speed only)",
    "servers": f"comma-separated subset of {', '.join(SERVERS)} (default: the first three)",
    "baseline": "another deniro checkout (e.g. `git worktree add /tmp/old HEAD~3`) whose server runs as before-*",
    "clients": "comma-separated concurrent client counts",
    "rounds": "rounds; each measures every (server, clients) cell once, servers interleaved",
    "requests": "requests per cell and round at most",
    "seconds": "seconds per cell and round at most",
    "warmup": "untimed requests before each level",
    "length": "token-length bucket of the sentences (texts of 3/4 L..L tokens)",
    "sentences": "distinct sentences, cycled",
    "dataset": f"folder of <split>.parquet files (default: {LOCAL_IMDB} when present)",
    "split": "split the sentences are cut from",
    "seed": "sentence choice and masked word",
    "max_batch_size": "--max-batch-size of the batched and hf-pipeline servers",
    "max_wait_ms": "--max-wait-ms of every server (default: each server's own)",
    "max_queue": "--max-queue of every server",
    "precision": "deniro_rt graph (default: the runtime's choice for the device)",
    "device": "--device of the deniro_rt servers (auto: CUDA when onnxruntime-gpu sees one); hf-pipeline "
    "runs on the CPU",
    "threads": "intra-op threads of every server: ONNX Runtime's, torch.set_num_threads for hf-pipeline "
    "(default: deniro_rt serve's, one per usable core)",
    "out": "report folder (default: bench/results/<machine>-<date>/, as for python -m bench all)",
    "quick": f"small counts ({QUICK}): checks the harness, not the speed",
}
TYPES = {"model": str, "torch_model": str, "precision": str, "threads": int, "baseline": str, "max_wait_ms": float}


def parse_args(argv: list[str] | None) -> LoadConfig:
    parser = config_parser(LoadConfig(), "python -m bench load", __doc__, HELP, TYPES, {"device": DEVICES})
    return LoadConfig(**vars(parser.parse_args(argv)))


def cli(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_args(argv)
    from .report import INTERRUPTED

    return run_main(lambda: main(config), interrupted=INTERRUPTED)


if __name__ == "__main__":  # the hf-pipeline server process (see server_command)
    sys.exit(serve_pipeline(sys.argv[1:]))
