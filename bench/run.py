"""main(BenchConfig): set up once, run the chosen benchmarks, write the reports, return the exit code."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from deniro_rt.artifact import load_manifest, verify_file
from deniro_rt.data import load_text_splits
from deniro_rt.errors import DeniroError
from deniro_rt.providers import DEVICES, HARDWARE

from . import report
from .config import MODEL_CARD_PROMPT, BenchConfig
from .engines import Context, Engine, deniro_precisions, make_engines
from .parity import eval_chunks, eval_settings, run_parity
from .timing import Timing, latency, throughput
from .train_bench import run_train
from .workload import PROMPT, Workload, bucket_lengths, build_workload, call_padding, load_tokenizer

log = logging.getLogger("bench")
EXIT_PARITY = 1  # a parity threshold failed (the reports are written all the same)
REFERENCE = ("pytorch-batched", "fp32")  # what the engines' top-1 agreement is measured against


# --------------------------------------------------------------------------- setup
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeniroError("--device cuda: PyTorch sees no CUDA GPU here; run on a GPU machine or pass --device cpu")
    if device not in HARDWARE:
        raise DeniroError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def resolve_artifact(model: str | None) -> Path:
    from deniro_rt.models import DEFAULT_MODEL_DIR

    return Path(model) if model else DEFAULT_MODEL_DIR


def resolve_torch_model(explicit: str | None, artifact: Path, manifest) -> Path:
    """--torch-model, else the manifest's source.model, else the artifact if it is a checkpoint too."""
    if explicit:
        candidates = [Path(explicit)]
    else:
        source = (manifest.raw.get("source") or {}).get("model")
        candidates = ([Path(source), artifact / source] if source else []) + [artifact]
    for path in candidates:
        if is_checkpoint(path):
            return path
    raise DeniroError(
        f"no transformers checkpoint for the PyTorch side (looked at "
        f"{', '.join(str(c) for c in candidates)}); pass --torch-model with the "
        f"save_pretrained folder the artifact was exported from"
    )


def is_checkpoint(path: Path) -> bool:
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    return (path / "config.json").is_file() and bool(weights)


def make_context(cfg: BenchConfig, device: str, needs_torch: bool = True) -> Context:
    """needs_torch=False (deniro_rt engines only, no parity): no PyTorch checkpoint is looked for."""
    artifact = resolve_artifact(cfg.model)
    manifest = load_manifest(artifact)
    for name in manifest.files:  # the engines read them with onnx, Optimum, transformers: a damaged one was a
        verify_file(manifest, name)  # traceback from inside those, after minutes of other engines
    torch_model = resolve_torch_model(cfg.torch_model, artifact, manifest) if needs_torch or cfg.torch_model else None
    log.info("artifact %s, PyTorch checkpoint %s, device %s", artifact, torch_model, device)
    return Context(device=device, artifact=artifact, manifest=manifest, torch_model=torch_model, top_k=cfg.top_k)


def make_workload(cfg: BenchConfig, ctx: Context, reviews: list[str], per_bucket: int) -> Workload:
    lengths = bucket_lengths(cfg.length_list(), ctx.manifest.max_positions)
    tokenizer = load_tokenizer(ctx.artifact)
    workload = build_workload(
        reviews, tokenizer, lengths, per_bucket, cfg.seed, ctx.manifest.mask_token, MODEL_CARD_PROMPT
    )
    log.info("workload: %s", json.dumps(workload.summary()["buckets"]))
    return workload


# --------------------------------------------------------------------------- speed
def speed_rows(
    cfg: BenchConfig, ctx: Context, workload: Workload, engines: list[Engine], modes: set[str]
) -> list[dict]:
    """One row per engine x precision x provider x batch x length (latency at batch 1); with --rounds N the
    engines are timed N times in turn and each row is its median round (median_rounds)."""
    timing = Timing(warmup=cfg.warmup, sync=ctx.sync, seconds=cfg.throughput_seconds)
    rounds, predictions, alive = [], {}, list(engines)
    lengths = list(workload.buckets) + ([PROMPT] if "latency" in modes else [])
    for _ in range(cfg.rounds):
        rows = []
        for engine in list(alive):
            try:
                rows += timed_engine(cfg, engine, workload, lengths, modes, timing, predictions)
            except Exception as exc:  # one engine's failure (a library's bug) must not lose the others' rows
                first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
                log.error("%s (%s) failed, its rows are left out: %s: %s", engine.label, engine.provider,
                          type(exc).__name__, first_line)  # fmt: skip
                alive.remove(engine)  # and it is not timed again in later rounds
        rounds.append(rows)
    rows = median_rounds(rounds)
    agreement(rows, predictions)
    return rows


def timed_engine(cfg, engine: Engine, workload: Workload, lengths, modes, timing, predictions) -> list[dict]:
    started = time.perf_counter()
    rows = [row for length in lengths for row in engine_rows(cfg, engine, workload, length, modes, timing, predictions)]
    log.info("%s (%s): measured in %.0f s", engine.label, engine.provider, time.perf_counter() - started)
    return rows


ROW_KEY = ("engine", "precision", "provider", "batch", "length")


def median_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Each row (ROW_KEY) as in its median round: latency by p50, throughput by sentences/s; the per-round
    values are kept (`rounds`). One round: the rows as they are."""
    if len(rounds) == 1:
        return rounds[0]
    merged = []
    for first in rounds[0]:
        key = tuple(first[k] for k in ROW_KEY)
        same = [row for rows in rounds for row in rows if tuple(row[k] for k in ROW_KEY) == key]
        row = dict(first)
        for metric, value in (("latency", "p50_ms"), ("throughput", "sentences_per_s")):
            measured = [r[metric] for r in same if r[metric]]
            if measured:
                by_value = sorted(measured, key=lambda m: m[value])
                row[metric] = {**by_value[(len(by_value) - 1) // 2], "rounds": [m[value] for m in measured]}
        merged.append(row)
    return merged


def engine_rows(cfg, engine: Engine, workload: Workload, length, modes, timing, predictions) -> list[dict]:
    texts, rows = workload.texts(length), {}
    desc = f"{engine.label} {length}"
    if "latency" in modes:
        rows[1] = _row(engine, 1, length)
        rows[1]["latency"] = latency(engine, texts, cfg.latency_samples, timing, desc + " latency")
    if "throughput" in modes and length != PROMPT:
        for batch in engine.batch_sizes(cfg.batch_list()):
            row = rows.setdefault(batch, _row(engine, batch, length))
            row["throughput"], pred = throughput(
                engine, texts, cfg.throughput_sentences, batch, timing, f"{desc} batch {batch}"
            )
            predictions[(engine.name, engine.precision, batch, length)] = pred
    return list(rows.values())


def _row(engine: Engine, batch: int, length) -> dict:
    return {
        "engine": engine.name,
        "scope": engine.scope,
        "precision": engine.precision,
        "provider": engine.provider,
        "batch": batch,
        "length": length,
        "latency": None,
        "throughput": None,
        "top1_vs_pytorch": None,
        # deniro_rt: `batch` texts a fill call, split below it into graph runs of at most this many padded
        # tokens (the runtime's CPU default; 0: none); the PyTorch engines run a batch as one padded forward
        "token_budget": getattr(getattr(engine, "fm", None), "token_budget", None),
    }


def agreement(rows: list[dict], predictions: dict) -> None:
    """Top-1 agreement of each engine's throughput predictions with pytorch-batched fp32's (same texts)."""
    for row in rows:
        mine = predictions.get((row["engine"], row["precision"], row["batch"], row["length"]))
        refs = [p for (e, prec, _, n), p in predictions.items() if (e, prec) == REFERENCE and n == row["length"]]
        if mine is None or not refs:
            continue
        n = min(len(mine.ids), len(refs[0].ids))
        row["top1_vs_pytorch"] = float((mine.ids[:n, 0] == refs[0].ids[:n, 0]).mean())


# --------------------------------------------------------------------------- main
def main(cfg: BenchConfig) -> int:
    """Run `cfg.command`; write the reports; 1 when a parity threshold fails, else 0."""
    wanted = {"parity", "latency", "throughput", "train"} if cfg.command == "all" else {cfg.command}
    device = resolve_device(cfg.device)
    cfg.engine_list(), cfg.length_list(), cfg.batch_list()  # bad lists fail now, not after minutes
    cfg.check_numbers()
    report.check_out(cfg.out_dir())
    result = {"header": report.header(device, cfg.cli()), "config": cfg.__dict__.copy()}
    if wanted & {"parity", "latency", "throughput"}:
        result.update(model_benchmarks(cfg, device, wanted))
    if "train" in wanted:
        result["train"] = run_train(
            [s for s in cfg.train_shapes.split(",") if s],
            cfg.train_steps,
            cfg.train_warmup,
            cfg.train_batch_size,
            cfg.train_chunk_size,
            cfg.train_precision,
            device,
        )
    stem = "bench" if cfg.command == "all" else cfg.command
    report.write(result, cfg.out_dir(), stem)
    failed = [f for r in result.get("parity", []) for f in r["failures"]]
    for line in failed:
        log.error("parity failed: %s", line)
    return EXIT_PARITY if failed else 0


def model_benchmarks(cfg: BenchConfig, device: str, wanted: set[str]) -> dict:
    needs_torch = "parity" in wanted or any(not e.startswith("deniro_rt") for e in cfg.engine_list())
    ctx = make_context(cfg, device, needs_torch)
    precisions = deniro_precisions(ctx.manifest, device, cfg.precisions)
    if not precisions:
        raise DeniroError(
            f"the artifact has no deniro_rt graph that runs on {device} (it has "
            f"{', '.join(ctx.manifest.graphs) or 'none'}); re-export it with fp32"
        )
    bucket_lengths(cfg.length_list(), ctx.manifest.max_positions)
    reviews = load_text_splits(cfg.dataset, [cfg.split], cfg.text_column)[cfg.split]
    modes = wanted & {"latency", "throughput"}
    per_bucket = max(
        [cfg.latency_samples]
        + ([cfg.throughput_sentences] if "throughput" in modes else [])
        + ([cfg.parity_sentences // 4 + 1] if "parity" in wanted else [])
    )
    workload = make_workload(cfg, ctx, reviews, per_bucket)
    out = {
        "model": {
            "artifact": str(ctx.artifact),
            "torch_model": str(ctx.torch_model),
            "manifest_source": ctx.manifest.raw.get("source"),
            "precisions": precisions,
        },
        "workload": workload.summary(),
    }
    if "parity" in wanted:
        out["parity"] = parity(cfg, ctx, workload, reviews, precisions)
    if modes:
        engines, out["skipped"] = make_engines(ctx, cfg.engine_list(), precisions)
        out["rows"] = speed_rows(cfg, ctx, workload, engines, modes)
        out["speedups"] = report.speedups(out["rows"])
        out["overhead"] = report.overhead(out["rows"])
        out["host_us"] = host_us(out["rows"], workload)
    return out


def host_us(rows: list[dict], workload: Workload) -> list[dict]:
    """Host microseconds per sentence at each batch size: end to end (deniro_rt, deniro_rt-arrays) minus the
    graph alone (deniro_rt-model), same precision, provider, batch and length; and the padding fraction of
    the graph runs those timed calls made (each call's `batch` texts sorted and split by the runtime's default
    token budget on that provider, as FillMask.batches does)."""
    from deniro_rt.runtime import check_budget

    timed = {tuple(r[k] for k in ROW_KEY): r["throughput"] for r in rows if r.get("throughput")}
    out = []
    for (engine, precision, provider, batch, length), thr in timed.items():
        model = timed.get(("deniro_rt-model", precision, provider, batch, length))
        if engine not in ("deniro_rt", "deniro_rt-arrays") or model is None:
            continue
        tokens = np.array(workload.tokens.get(length) or [length])  # [n_texts] token counts, cycled by the calls
        e2e_us, model_us = 1e6 / thr["sentences_per_s"], 1e6 / model["sentences_per_s"]
        padding = call_padding(tokens, batch, thr["sentences"], check_budget(None, provider))
        out.append(
            {
                "engine": engine,
                "precision": precision,
                "provider": provider,
                "batch": batch,
                "length": length,
                "e2e_us": e2e_us,
                "model_us": model_us,
                "host_us": e2e_us - model_us,
                "padding_fraction": padding,
            }
        )
    return out


def parity(cfg: BenchConfig, ctx: Context, workload: Workload, reviews: list[str], precisions) -> list[dict]:
    settings = eval_settings(ctx.torch_model, ctx.manifest.max_positions, cfg.chunk_size, cfg.eval_seed)
    masked = eval_chunks(load_tokenizer(ctx.artifact), reviews, cfg.parity_texts, settings, ctx.manifest.mask_token_id)
    log.info(
        "parity: %d premasked chunks of %d tokens (seed %d), %d sentences",
        len(masked.input_ids),
        settings.chunk_size,
        settings.eval_seed,
        len(workload.sample(cfg.parity_sentences)),
    )
    results = run_parity(ctx, masked, workload.sample(cfg.parity_sentences), precisions, cfg.batch_list()[0])
    for r in results:
        r["eval"] = {**settings.__dict__, "texts": cfg.parity_texts, "chunks": int(len(masked.input_ids))}
    return results
