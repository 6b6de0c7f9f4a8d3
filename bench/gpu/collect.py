"""Gather the GPU run's results into what comes back from the device (at most 8 files, 2 folders deep).

    python bench/gpu/collect.py WORK OUT DEVICE

OUT gets: summary.json (step times and exit codes, training tokens/s and the MiniLM's per-epoch
perplexities, parity, the goal rows, CUDA checks, the export manifests' validation), results.tar.gz
(every JSON/markdown/PNG report of WORK, no models) and base-bench.md for reading at a glance. run.sh
itself writes log.txt, and carry.py the MiniLM weights (fp16 parts): 7 files of the 8 allowed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

REPORTS = (".json", ".md", ".png", ".txt")


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def without(report: dict | None, key: str) -> dict:
    return {k: v for k, v in (report or {}).items() if k != key}


def steps(work: Path) -> list[dict]:
    rows = []
    if (work / "steps.txt").is_file():
        for line in (work / "steps.txt").read_text().splitlines():
            name, rc, seconds = line.rsplit(" ", 2)
            rows.append({"step": name, "exit": rc, "seconds": int(seconds)})
    return rows


def goal_rows(bench: dict | None) -> dict:
    """The rows the issue's goals are read from: B=1 latency, throughput at length 16, host overhead."""
    if not bench:
        return {}
    rows = bench.get("rows", [])
    short = [r for r in rows if r["length"] in (16, "prompt")]
    return {
        "latency_b1": [
            {k: r[k] for k in ("engine", "scope", "precision", "length")} | {"p50_ms": r["latency"]["p50_ms"]}
            for r in short
            if r["latency"]
        ],
        "throughput_16": [
            {k: r[k] for k in ("engine", "scope", "precision", "batch")}
            | {"sentences_per_s": r["throughput"]["sentences_per_s"]}
            for r in rows
            if r["length"] == 16 and r["throughput"]
        ],
        "overhead": bench.get("overhead", []),
        "parity": bench.get("parity", []),
    }


def main(work: Path, out: Path, device: str) -> None:
    bench = load(work / "bench-base" / "bench.json")
    summary = {
        "device": device,
        "steps": steps(work),
        "train_minilm_real": without(load(work / "train-minilm.json"), "config"),
        "minilm_pack": without(load(work / "minilm-pack.json"), "metrics"),
        "train_mini_synthetic": (load(work / "train-mini-probe" / "train.json") or {}).get("train"),
        "train_base_synthetic": (load(work / "train-base" / "train.json") or {}).get("train"),
        "train_loop": (load(work / "loop.json") or {}).get("summary"),  # STAGES=loop: eager vs compiled
        "minilm_validation": (load(work / "minilm-onnx" / MANIFEST) or {}).get("validation"),
        "minilm_parity": (load(work / "minilm-parity" / "parity.json") or {}).get("parity"),
        "base": goal_rows(bench),
        "cuda_checks": load(work / "check-base.json"),
        "header": (bench or {}).get("header"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and (
                path.name == MANIFEST or path.suffix in REPORTS and not any(p in path.parts for p in MODEL_DIRS)
            ):
                tar.add(path, arcname=str(path.relative_to(work)))
    if (work / "bench-base" / "bench.md").is_file():
        shutil.copy(work / "bench-base" / "bench.md", out / "base-bench.md")
    print(json.dumps({s["step"]: s["exit"] for s in summary["steps"]}, indent=1))


# checkpoints, exports and data stay behind (but each export's manifest, deniro.json, comes back)
MODEL_DIRS = (
    "minilm",
    "base",
    "minilm-onnx",
    "base-onnx",
    "minilm-init",
    "minilm-fp16",
    "minilm-parts",
    "data",
    "packed",
)
MANIFEST = "deniro.json"

if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
