"""python -m bench.host: the host-path goal of issue 21, measured as ratios in one interleaved run.

Per sentence, at one batch size, on IMDB sentences of --min-words..--max-words words (one masked):
the bare tokenizer's `encode_batch` (the floor), `fill_arrays` (columnar), `fill` (dicts), the graph
alone on feeds prepared ahead (`model`), and host work = end to end - model. Meant for a near-free
graph (a 1-layer model), where end to end is almost all host work. Goals (issue 21): fill_arrays
<= 1.5x encode_batch, fill <= 3x. `arrays-overlap`: fill_arrays with the CUDA default's pipeline on CPU
(`overlap=True`: block i+1 tokenized in a thread while block i runs), which issue 21 asks to measure
before leaving it off on CPU, where the tokenizer and the graph share the cores.

  python -m bench.host --model exports/one-layer --batch 512 --out bench/results/cpu-2core-arrays
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deniro_rt.errors import DeniroError

from . import report
from .config import dated_results_dir, default_dataset

INT_FIELDS = ("batch", "batches", "repeats", "min_words", "max_words", "threads", "token_budget", "overlap_block")
GOALS = {"arrays": 1.5, "dicts": 3.0}  # x the bare tokenizer's encode_batch, per sentence


@dataclass
class HostConfig:
    model: str | None = None  # artifact folder (default: the shipped model)
    batch: int = 512
    batches: int = 8  # distinct batches of sentences, each timed `repeats` times per engine
    repeats: int = 3
    min_words: int = 5
    max_words: int = 12
    threads: int | None = None  # ORT intra-op threads (default: all cores)
    token_budget: int | None = None  # padded tokens per graph run (default: the runtime's CPU budget; 0: none)
    overlap_block: int = 128  # texts a block in arrays-overlap (4 blocks a batch of 512); 0: not measured
    dataset: str = ""
    out: str = field(default_factory=lambda: str(dated_results_dir()))  # never a committed results folder


def sentences(cfg: HostConfig, mask_token: str) -> list[str]:
    """batch * batches IMDB test sentences of min..max words, one word masked each (seed 0)."""
    from deniro_rt.data import load_text_splits, mask_one_word, review_sentences

    reviews = load_text_splits(cfg.dataset or default_dataset(), ["test"], "text")["test"]
    rng, wanted, out = np.random.default_rng(0), cfg.batch * cfg.batches, []
    for review in reviews:
        for sentence in review_sentences(review):
            masked = (
                mask_one_word(sentence, rng, mask_token)
                if cfg.min_words <= len(sentence.split()) <= cfg.max_words
                else None
            )
            if masked:
                out.append(masked[0])
        if len(out) >= wanted:
            return out[:wanted]
    return out


def measure(cfg: HostConfig) -> dict:
    """Median microseconds per sentence of each call, interleaved batch by batch (same load for all), the
    order rotated from batch to batch: each call follows each other one as often (the call after the bare
    tokenizer was measured up to 8 % slower)."""
    from deniro_rt import FillMask

    from .workload import call_padding

    fm = FillMask(cfg.model, device="cpu", threads=cfg.threads, token_budget=cfg.token_budget)
    texts = sentences(cfg, fm.mask_token)
    batches = [texts[i : i + cfg.batch] for i in range(0, len(texts), cfg.batch)]
    calls = make_calls(cfg, fm, batches)
    times: dict[str, list[float]] = {name: [] for name in calls}
    names, turn = list(calls), 0
    for _ in range(cfg.repeats + 1):  # the first round warms up and is dropped
        for i in range(len(batches)):
            turn += 1
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                start = time.perf_counter()
                calls[name](i)
                times[name].append((time.perf_counter() - start) / len(batches[i]) * 1e6)
    us = {name: float(np.median(t[len(batches) :])) for name, t in times.items()}
    lengths = fm.encode_rows(texts, truncation=False).lengths
    return {
        "us_per_sentence": us,
        "sentences": len(texts),
        "mean_tokens": float(lengths.mean()),
        "padding_fraction": call_padding(lengths, cfg.batch, len(texts), fm.token_budget),  # per call, as run
        "threads": cfg.threads,
        "token_budget": fm.token_budget,
        "artifact": str(fm.manifest.folder),
    }


def make_calls(cfg: HostConfig, fm, batches: list[list[str]]) -> dict:
    """The timed calls on batch i: the bare tokenizer, fill_arrays, fill, the graph alone on prepared feeds and,
    unless overlap_block is 0, fill_arrays through a second FillMask with the overlapped pipeline."""
    from deniro_rt import FillMask

    feeds = [fm.prepared_feeds(b, 5, cfg.batch)[0] for b in batches]
    calls = {
        "encode_batch": lambda i: fm.tokenizer.encode_batch(batches[i]),
        "arrays": lambda i: fm.fill_arrays(batches[i], top_k=5, batch_size=cfg.batch),
        "dicts": lambda i: fm.fill(batches[i], top_k=5, batch_size=cfg.batch),
        "model": lambda i: [fm.run_graph(f) for f in feeds[i]],
    }
    if cfg.overlap_block:
        options = dict(threads=cfg.threads, token_budget=cfg.token_budget, overlap_block=cfg.overlap_block)
        piped = FillMask(cfg.model, device="cpu", overlap=True, **options)
        calls["arrays-overlap"] = lambda i: piped.fill_arrays(batches[i], top_k=5, batch_size=cfg.batch)
    return calls


def ratios(result: dict) -> dict:
    us = result["us_per_sentence"]
    floor = us["encode_batch"]
    out = {f"{name}_vs_encode_batch": us[name] / floor for name in ("arrays", "dicts")}
    out |= {f"{name}_host_vs_encode_batch": (us[name] - us["model"]) / floor for name in ("arrays", "dicts")}
    out["goals_met"] = {name: out[f"{name}_vs_encode_batch"] <= goal for name, goal in GOALS.items()}
    if "arrays-overlap" in us:  # < 1: the pipeline pays on this CPU
        out["arrays_overlap_vs_arrays"] = us["arrays-overlap"] / us["arrays"]
    return out


def to_markdown(result: dict) -> str:
    us, r = result["us_per_sentence"], result["ratios"]
    lines = [
        (
            f"# Host path (issue 21): batch {result['config']['batch']}, {result['sentences']} IMDB sentences "
            f"of {result['config']['min_words']}-{result['config']['max_words']} words"
        ),
        "",
        f"`{result['header']['command']}` on {result['artifact']}",
        "",
        f"- {result['header']['hardware']}",
        (f"- mean tokens {result['mean_tokens']:.1f}, padding fraction {result['padding_fraction']:.3f}"),
        "",
    ]
    rows = [
        [
            name,
            f"{value:.2f}",
            f"{value / us['encode_batch']:.2f}x",
            f"{max(0.0, value - us['model']):.2f}" if name in ("arrays", "dicts", "arrays-overlap") else "",
        ]
        for name, value in us.items()
    ]
    lines += report.table(
        "Microseconds per sentence (medians, interleaved)",
        ["call", "us/sentence", "vs encode_batch", "host us (e2e - model)"],
        rows,
    )
    lines += [
        (
            f"Goals: fill_arrays <= {GOALS['arrays']}x encode_batch: {r['goals_met']['arrays']} "
            f"({r['arrays_vs_encode_batch']:.2f}x); fill <= {GOALS['dicts']}x: {r['goals_met']['dicts']} "
            f"({r['dicts_vs_encode_batch']:.2f}x)."
        ),
        "",
    ]
    if "arrays_overlap_vs_arrays" in r:
        block = result["config"]["overlap_block"]
        lines += [f"Overlapped pipeline (blocks of {block}): {r['arrays_overlap_vs_arrays']:.2f}x fill_arrays.", ""]
    return "\n".join(lines)


def to_png(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    us = result["us_per_sentence"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(us), list(us.values()), color=["grey", "tab:green", "tab:blue", "tab:orange", "tab:olive"])
    ax.set_xlabel("microseconds per sentence (lower is better)")
    ax.set_title(f"batch {result['config']['batch']}: host path vs the bare tokenizer", fontsize=9)
    fig.tight_layout()
    report.save_figure(fig, path, dpi=120)


def main(cfg: HostConfig) -> dict:
    report.check_out(Path(cfg.out))
    result = measure(cfg)
    command = "python -m bench.host " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in asdict(cfg).items()
        if v not in (None, "") and v != getattr(HostConfig(), k)
    )
    result = {"header": report.header("cpu", command), "config": asdict(cfg), **result}
    result["ratios"] = ratios(result)
    report.write_files(result, Path(cfg.out), "host", to_markdown, to_png)
    return result


HELP = {
    "model": "artifact folder (default: the shipped model; the goals are meant for a near-free 1-layer graph)",
    "batch": "sentences a call",
    "batches": "distinct batches of sentences, each timed --repeats times per call",
    "repeats": "timings of every batch per call",
    "min_words": "shortest IMDB test sentence used, in words",
    "max_words": "longest IMDB test sentence used, in words",
    "threads": "ONNX Runtime intra-op threads (default: all cores)",
    "token_budget": "padded tokens per graph run (default: the runtime's CPU budget; 0: none)",
    "overlap_block": "texts a block in the arrays-overlap call (0: that call is not measured)",
    "dataset": "folder of <split>.parquet files (default: ../shared/data/imdb when present, else the hub id)",
    "out": "report folder for host.json, host.md, host.png (default: bench/results/<machine>-<date>/)",
}
LEAST = dict(batch=1, batches=1, repeats=1, min_words=1, max_words=1, threads=1, token_budget=0, overlap_block=0)


def parse_args(argv: list[str] | None = None) -> HostConfig:
    from deniro_rt.cli import check_least, config_parser

    types = {name: int for name in INT_FIELDS}
    parser = config_parser(HostConfig(), "python -m bench.host", __doc__, HELP, types=types)
    cfg = HostConfig(**vars(parser.parse_args(argv)))
    check_least(cfg, LEAST)
    if cfg.min_words > cfg.max_words:
        raise DeniroError(f"--min-words {cfg.min_words} is above --max-words {cfg.max_words}")
    return cfg


if __name__ == "__main__":
    import json
    import sys

    from deniro_rt.cli import run_main, setup_logging

    setup_logging()
    sys.exit(
        run_main(lambda: print(json.dumps(main(parse_args())["ratios"], indent=2)), interrupted=report.INTERRUPTED)
    )
