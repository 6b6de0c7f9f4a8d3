"""The reports: JSON (header + every row), a markdown summary and a PNG plot."""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from export.pipeline import versions

log = logging.getLogger(__name__)
VERSIONED = ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "optimum", "optimum-onnx",
             "tokenizers", "numpy", "accelerate", "deniro")


# --------------------------------------------------------------------------- header
def header(device: str, command: str) -> dict:
    return {"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": platform.node(), "command": command,
            "device": device, "hardware": hardware(), "versions": versions(VERSIONED)}


def hardware() -> dict:
    import psutil

    info = {"cpu": cpu_model(), "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "torch_threads": _torch_threads()}
    return {**info, **gpu()}


def cpu_model() -> str:
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor()
    except Exception:  # py-cpuinfo missing or failing on an odd platform: the report still gets written
        return platform.processor() or platform.machine()


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def gpu() -> dict:
    """GPU name, memory and driver (from torch and nvidia-smi); nulls on a CPU-only machine."""
    found = {"gpu": None, "gpu_memory_gib": None, "gpu_driver": None, "cuda": None}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            found.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                         cuda=torch.version.cuda)
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        found["gpu_driver"] = done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
    return found


# --------------------------------------------------------------------------- speedups
def _key(row: dict) -> str:
    return f"{row['engine']}/{row['precision']}"


def speedups(rows: list[dict]) -> list[dict]:
    """deniro_rt over every other engine, from the same run: latency p50 ratio, throughput ratio.

    Compared at the same length; throughput at the same batch, except pytorch-card (batch 1 only),
    which every deniro_rt batch is compared with.
    """
    out = []
    ours = [r for r in rows if r["engine"] == "deniro_rt"]
    for mine in ours:
        for other in rows:
            if other["engine"] == "deniro_rt" or other["length"] != mine["length"]:
                continue
            same_batch = other["batch"] == mine["batch"] or other["engine"] == "pytorch-card"
            if mine["latency"] and other["latency"] and other["batch"] == mine["batch"] == 1:
                out.append(_speedup(mine, other, "latency",
                                    other["latency"]["p50_ms"] / mine["latency"]["p50_ms"]))
            if mine["throughput"] and other["throughput"] and same_batch:
                out.append(_speedup(mine, other, "throughput", mine["throughput"]["sentences_per_s"]
                                    / other["throughput"]["sentences_per_s"]))
    return out


def _speedup(mine: dict, other: dict, metric: str, value: float) -> dict:
    return {"metric": metric, "length": mine["length"], "deniro_rt": _key(mine), "batch": mine["batch"],
            "versus": _key(other), "versus_batch": other["batch"], "speedup": value}


# --------------------------------------------------------------------------- files
def write(report: dict, out: Path, stem: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(report))
    if report.get("rows"):
        paths["plot"] = out / f"{stem}.png"
        plot(report["rows"], paths["plot"], report["header"])
    for kind, path in paths.items():
        log.info("%s report: %s", kind, path)
    return paths


def markdown(report: dict) -> str:
    h = report["header"]
    hw, v = h["hardware"], h["versions"]
    lines = [f"# deniro bench — {h['machine']}, {h['created']}", "",
             f"`{h['command']}`", "",
             f"- device: {h['device']}; CPU: {hw['cpu']} ({hw['physical_cores']} cores / "
             f"{hw['logical_cores']} threads, {hw['usable_cores']} usable), {hw['memory_gib']} GiB",
             f"- GPU: {hw['gpu'] or 'none'}" + (f" (driver {hw['gpu_driver']}, CUDA {hw['cuda']})" if hw['gpu'] else ""),
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val), ""]
    if report.get("model"):
        lines += [f"- model: `{report['model']['artifact']}` (PyTorch side: `{report['model']['torch_model']}`)", ""]
    for section in (_parity_md, _speed_md, _speedup_md, _train_md, _skipped_md):
        lines += section(report)
    return "\n".join(lines) + "\n"


def _parity_md(report: dict) -> list[str]:
    if not report.get("parity"):
        return []
    lines = ["## Parity (PyTorch fp32 vs deniro_rt)", "",
             "| precision | provider | perplexity torch | perplexity deniro_rt | rel. diff | top-1 | top-5 identical | max abs Δ log-prob | pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["parity"]:
        c, s = r["chunks"], r["sentences"]
        lines.append(f"| {r['precision']} | {r['provider']} | {c['torch']['perplexity']:.4f} | "
                     f"{c['deniro_rt']['perplexity']:.4f} | {c['rel_diff']:.2e} | {s['top1_agreement']:.2%} | "
                     f"{s.get('top5_identical', float('nan')):.2%} | {s['max_abs_logprob_diff']:.2e} | "
                     f"{'yes' if r['passed'] else 'NO: ' + '; '.join(r['failures'])} |")
    return lines + [""]


def _speed_md(report: dict) -> list[str]:
    if not report.get("rows"):
        return []
    lines = ["## Latency and throughput (end to end: tokenize, model, top-k, decode)", "",
             "| engine | precision | provider | batch | length | p50 ms | p90 ms | p99 ms | sentences/s | n | top-1 vs pytorch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lat, thr = r["latency"] or {}, r["throughput"] or {}
        agree = r.get("top1_vs_pytorch")
        lines.append(f"| {r['engine']} | {r['precision']} | {r['provider']} | {r['batch']} | {r['length']} | "
                     f"{_f(lat.get('p50_ms'))} | {_f(lat.get('p90_ms'))} | {_f(lat.get('p99_ms'))} | "
                     f"{_f(thr.get('sentences_per_s'), 1)} | {thr.get('sentences', lat.get('samples', ''))} | "
                     f"{'' if agree is None else f'{agree:.1%}'} |")
    return lines + [""]


def _speedup_md(report: dict) -> list[str]:
    """One line per deniro_rt row, one column per engine it is compared with."""
    if not report.get("speedups"):
        return []
    versus = list(dict.fromkeys(s["versus"] for s in report["speedups"]))
    lines = ["## Speedup of deniro_rt (same run; latency: p50 ratio at batch 1, throughput: "
             "sentences/s ratio at the same batch, pytorch-card at 1)", "",
             "| metric | length | deniro_rt | batch | " + " | ".join(f"vs {v}" for v in versus) + " |",
             "|---" * (4 + len(versus)) + "|"]
    table: dict[tuple, dict] = {}
    for s in report["speedups"]:
        table.setdefault((s["metric"], s["length"], s["deniro_rt"], s["batch"]), {})[s["versus"]] = s["speedup"]
    for (metric, length, ours, batch), values in table.items():
        cells = [f"{values[v]:.2f}x" if v in values else "" for v in versus]
        lines.append(f"| {metric} | {length} | {ours} | {batch} | " + " | ".join(cells) + " |")
    return lines + [""]


def _train_md(report: dict) -> list[str]:
    if not report.get("train"):
        return []
    lines = ["## Training loop (random init, synthetic tokens)", "",
             "| shape | precision | device | parameters | batch x chunk | step ms | tokens/s |", "|---|---|---|---|---|---|---|"]
    for r in report["train"]:
        lines.append(f"| {r['shape']} | {r['precision']} | {r['device']} | {r['parameters']:,} | "
                     f"{r['batch_size']} x {r['chunk_size']} | {r['step_ms_mean']:.1f} | {r['tokens_per_s']:,.0f} |")
    return lines + [""]


def _skipped_md(report: dict) -> list[str]:
    if not report.get("skipped"):
        return []
    return ["## Skipped", ""] + [f"- {s['engine']}/{s['precision']}: {s['reason']}" for s in report["skipped"]] + [""]


def _f(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- plot
def plot(rows: list[dict], path: Path, head: dict) -> None:
    """Two panels, log scale: batch-1 latency p50 and best throughput, by engine and length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(_label(r) for r in rows))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    panels = [p for p in PANELS if any(r[p[0]] for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (kind, value, title) in zip(axes[0], panels):
        _panel(ax, rows, colors, kind, value, title)
    hw = head["hardware"]
    fig.suptitle(f"deniro bench, end to end — {head['device']}: {hw['gpu'] or hw['cpu']}", fontsize=11)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[label]) for label in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


PANELS = (("latency", lambda r: r["latency"]["p50_ms"], "latency p50, batch 1 (ms, lower is better)"),
          ("throughput", lambda r: r["throughput"]["sentences_per_s"],
           "throughput at the best batch (sentences/s, higher is better)"))


def _label(row: dict) -> str:
    return f"{_key(row)} ({row['provider'].replace('ExecutionProvider', '')})"


def _panel(ax, rows: list[dict], colors: dict, kind: str, value, title: str) -> None:
    from matplotlib.ticker import FuncFormatter

    measured = [r for r in rows if r[kind]]
    lengths = sorted({str(r["length"]) for r in measured}, key=_length_order)
    labels = [label for label in colors if any(_label(r) == label for r in measured)]
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        best: dict[str, float] = {}
        for r in (r for r in measured if _label(r) == label):
            n = str(r["length"])
            best[n] = max(best.get(n, 0.0), value(r)) if kind == "throughput" else value(r)
        xs = [j + i * width for j, n in enumerate(lengths) if n in best]
        ax.bar(xs, [best[n] for n in lengths if n in best], width, color=colors[label])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))],
                  [f"{n} tokens" if n.isdigit() else n for n in lengths])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)


def _length_order(length: str):
    return (0, int(length)) if length.isdigit() else (1, 0)
