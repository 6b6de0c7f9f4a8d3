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

from .figures import save_figure

log = logging.getLogger(__name__)
VERSIONED = (
    "torch",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "optimum",
    "optimum-onnx",
    "tokenizers",
    "numpy",
    "accelerate",
    "deniro",
)


# --------------------------------------------------------------------------- header
def header(device: str, command: str) -> dict:
    return {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "command": command,
        "device": device,
        "hardware": hardware(),
        "versions": versions(VERSIONED),
    }


def hardware() -> dict:
    import psutil

    info = {
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "torch_threads": _torch_threads(),
    }
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
            found.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
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

    End-to-end rows only. Compared at the same length; throughput at the same batch, except
    pytorch-card (batch 1 only), which every deniro_rt batch is compared with.
    """
    out = []
    e2e = [r for r in rows if r.get("scope", "e2e") == "e2e"]
    for mine in (r for r in e2e if r["engine"] == "deniro_rt"):
        for other in e2e:
            if other["engine"] == "deniro_rt" or other["length"] != mine["length"]:
                continue
            same_batch = other["batch"] == mine["batch"] or other["engine"] == "pytorch-card"
            if mine["latency"] and other["latency"] and other["batch"] == mine["batch"] == 1:
                out.append(_speedup(mine, other, "latency", other["latency"]["p50_ms"] / mine["latency"]["p50_ms"]))
            if mine["throughput"] and other["throughput"] and same_batch:
                out.append(
                    _speedup(
                        mine,
                        other,
                        "throughput",
                        mine["throughput"]["sentences_per_s"] / other["throughput"]["sentences_per_s"],
                    )
                )
    return out


def _speedup(mine: dict, other: dict, metric: str, value: float) -> dict:
    return {
        "metric": metric,
        "length": mine["length"],
        "deniro_rt": _key(mine),
        "batch": mine["batch"],
        "versus": _key(other),
        "versus_batch": other["batch"],
        "speedup": value,
    }


def overhead(rows: list[dict]) -> list[dict]:
    """Host overhead per call: deniro_rt end-to-end p50 minus deniro_rt-model p50 (the graph alone on
    prepared inputs), same precision, provider and length, batch 1, same run."""
    model = {
        (r["precision"], r["provider"], r["length"]): r
        for r in rows
        if r["engine"] == "deniro_rt-model" and r["batch"] == 1 and r["latency"]
    }
    out = []
    for r in rows:
        graph = model.get((r["precision"], r["provider"], r["length"]))
        if r["engine"] != "deniro_rt" or r["batch"] != 1 or not r["latency"] or graph is None:
            continue
        e2e_ms, model_ms = r["latency"]["p50_ms"], graph["latency"]["p50_ms"]
        out.append(
            {
                "precision": r["precision"],
                "provider": r["provider"],
                "length": r["length"],
                "e2e_p50_ms": e2e_ms,
                "model_p50_ms": model_ms,
                "host_ms": e2e_ms - model_ms,
            }
        )
    return out


# --------------------------------------------------------------------------- files
INTERRUPTED = "interrupted: no report written (a benchmark writes its reports when it has run to the end)"


def check_out(out: Path) -> Path:
    """--out, refused before any measurement when it cannot hold the reports (a file, a path below a file, a
    folder this user cannot write): it was an OSError traceback after the whole run, its results lost."""
    from deniro_rt.files import check_output_folder

    return check_output_folder(out, {}, flag="--out")


def write(report: dict, out: Path, stem: str) -> dict[str, Path]:
    plot_rows = (lambda r, path: plot(r["rows"], path, r["header"])) if report.get("rows") else None
    return write_files(report, out, stem, markdown, plot_rows)


def write_files(result: dict, out: Path, stem: str, to_markdown, to_png=None) -> dict[str, Path]:
    """<stem>.json (the whole result), <stem>.md and, given a plotter, <stem>.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["markdown"].write_text(to_markdown(result))
    if to_png is not None:
        paths["plot"] = out / f"{stem}.png"
        to_png(result, paths["plot"])
    for kind, path in paths.items():
        log.info("%s report: %s", kind, path)
    return paths


def markdown(report: dict) -> str:
    h = report["header"]
    hw, v = h["hardware"], h["versions"]
    lines = [
        f"# deniro bench — {h['machine']}, {h['created']}",
        "",
        f"`{h['command']}`",
        "",
        f"- device: {h['device']}; CPU: {hw['cpu']} ({hw['physical_cores']} cores / "
        f"{hw['logical_cores']} threads, {hw['usable_cores']} usable), {hw['memory_gib']} GiB",
        f"- GPU: {hw['gpu'] or 'none'}" + (f" (driver {hw['gpu_driver']}, CUDA {hw['cuda']})" if hw["gpu"] else ""),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        "",
    ]
    if report.get("model"):
        lines += [f"- model: `{report['model']['artifact']}` (PyTorch side: `{report['model']['torch_model']}`)", ""]
    for section in (_parity_md, _speed_md, _overhead_md, _host_md, _speedup_md, _train_md, _skipped_md):
        lines += section(report)
    return "\n".join(lines) + "\n"


def table(title: str, headers: list[str], rows: list[list]) -> list[str]:
    """A markdown section: '## title', a table with these headers and rows (cells as given), a blank line."""
    lines = [f"## {title}", "", "| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _parity_md(report: dict) -> list[str]:
    if not report.get("parity"):
        return []
    rows = []
    for r in report["parity"]:
        c, s = r["chunks"], r["sentences"]
        rows.append(
            [
                r["precision"],
                r["provider"],
                f"{c['torch']['perplexity']:.4f}",
                f"{c['deniro_rt']['perplexity']:.4f}",
                f"{c['rel_diff']:.2e}",
                f"{s['top1_agreement']:.2%}",
                f"{s.get('top5_identical', float('nan')):.2%}",
                f"{s['max_abs_logprob_diff']:.2e}",
                "yes" if r["passed"] else "NO: " + "; ".join(r["failures"]),
            ]
        )
    return table(
        "Parity (PyTorch fp32 vs deniro_rt)",
        [
            "precision",
            "provider",
            "perplexity torch",
            "perplexity deniro_rt",
            "rel. diff",
            "top-1",
            "top-5 identical",
            "max abs Δ log-prob",
            "pass",
        ],
        rows,
    )


def _speed_md(report: dict) -> list[str]:
    if not report.get("rows"):
        return []
    return _budget_note(report["rows"]) + table(
        "Latency and throughput (scope e2e: tokenize, model, top-k, decode; model: the graph alone on prepared inputs)",
        [
            "engine",
            "scope",
            "precision",
            "provider",
            "batch",
            "length",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "sentences/s",
            "n",
            "top-1 vs pytorch",
        ],
        [_speed_row(r) for r in report["rows"]],
    )


def _budget_note(rows: list[dict]) -> list[str]:
    """What a deniro_rt batch row runs: `batch` texts a call, but graph runs of at most the token budget."""
    budgets = sorted({r["token_budget"] for r in rows if r.get("token_budget")})
    if not budgets:
        return []
    return [
        f"deniro_rt rows: `batch` texts per fill call, sorted by length and run as graphs of at most "
        f"{' / '.join(map(str, budgets))} padded tokens each (the runtime's CPU token budget: fewer rows than "
        f"`batch` for long texts); the PyTorch engines run each batch as one padded forward.",
        "",
    ]


def _speed_row(r: dict) -> list:
    lat, thr = r["latency"] or {}, r["throughput"] or {}
    agree = r.get("top1_vs_pytorch")
    return [
        r["engine"],
        r.get("scope", "e2e"),
        r["precision"],
        r["provider"],
        r["batch"],
        r["length"],
        _f(lat.get("p50_ms")),
        _f(lat.get("p90_ms")),
        _f(lat.get("p99_ms")),
        _f(thr.get("sentences_per_s"), 1),
        thr.get("sentences", lat.get("samples", "")),
        "" if agree is None else f"{agree:.1%}",
    ]


def _overhead_md(report: dict) -> list[str]:
    if not report.get("overhead"):
        return []
    rows = [
        [
            o["precision"],
            o["provider"],
            o["length"],
            f"{o['e2e_p50_ms']:.3f}",
            f"{o['model_p50_ms']:.3f}",
            f"{o['host_ms']:.3f}",
        ]
        for o in report["overhead"]
    ]
    return table(
        "Host overhead per call (deniro_rt end to end minus the graph alone, p50 at batch 1)",
        ["precision", "provider", "length", "e2e p50 ms", "model p50 ms", "host ms"],
        rows,
    )


def _host_md(report: dict) -> list[str]:
    if not report.get("host_us"):
        return []
    rows = [
        [
            h["batch"],
            h["length"],
            h["engine"],
            h["precision"],
            h["provider"],
            f"{h['e2e_us']:.1f}",
            f"{h['model_us']:.1f}",
            f"{h['host_us']:.1f}",
            f"{h['padding_fraction']:.3f}",
        ]
        for h in report["host_us"]
    ]
    return table(
        "Host microseconds per sentence (throughput: end to end minus the graph alone, same batches)",
        ["batch", "length", "engine", "precision", "provider", "e2e us", "model us", "host us", "padding"],
        rows,
    )


def _speedup_md(report: dict) -> list[str]:
    """One line per deniro_rt row, one column per engine it is compared with."""
    if not report.get("speedups"):
        return []
    versus = list(dict.fromkeys(s["versus"] for s in report["speedups"]))
    grouped: dict[tuple, dict] = {}
    for s in report["speedups"]:
        grouped.setdefault((s["metric"], s["length"], s["deniro_rt"], s["batch"]), {})[s["versus"]] = s["speedup"]
    rows = [[*key, *(f"{values[v]:.2f}x" if v in values else "" for v in versus)] for key, values in grouped.items()]
    return table(
        "Speedup of deniro_rt (same run; latency: p50 ratio at batch 1, throughput: sentences/s ratio "
        "at the same batch, pytorch-card at 1)",
        ["metric", "length", "deniro_rt", "batch", *(f"vs {v}" for v in versus)],
        rows,
    )


def _train_md(report: dict) -> list[str]:
    if not report.get("train"):
        return []
    rows = [
        [
            r["shape"],
            r["precision"],
            r["device"],
            f"{r['parameters']:,}",
            f"{r['batch_size']} x {r['chunk_size']}",
            f"{r['step_ms_mean']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
        ]
        for r in report["train"]
    ]
    return table(
        "Training loop (random init, synthetic tokens)",
        ["shape", "precision", "device", "parameters", "batch x chunk", "step ms", "tokens/s"],
        rows,
    )


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
    save_figure(fig, path)


PANELS = (
    ("latency", lambda r: r["latency"]["p50_ms"], "latency p50, batch 1 (ms, lower is better)"),
    (
        "throughput",
        lambda r: r["throughput"]["sentences_per_s"],
        "throughput at the best batch (sentences/s, higher is better)",
    ),
)


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
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(lengths))], [f"{n} tokens" if n.isdigit() else n for n in lengths]
    )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)


def _length_order(length: str):
    return (0, int(length)) if length.isdigit() else (1, 0)
