"""python -m bench quant: the int8 options side by side — agreement with fp32, batch drift, speed.

For a trained artifact (--model, default the shipped model) each int8 method of export/config.py's
INT8_METHODS is built from its fp32 fast.onnx (export.optimize.quantize_fused) and compared with that
fp32 graph (ONNX vs ONNX, no torch); so are the per-row int8 rewrites (export/rowquant.py: row, row-ffn,
row2, row2-ffn), OpenVINO running the fp32 graph in f32 or bf16 (openvino-f32, openvino-bf16; needs the
`openvino` extra) and NNCF's SmoothQuant static int8 run by OpenVINO (openvino-int8; the `nncf` extra;
bench/openvino.py): top-1 agreement and identical top-5 lists on masked IMDB test
sentences, perplexity on premasked test chunks, and the largest batch drift (a sentence alone vs padded
into a batch of --drift-sentences short sentences: max |score| change of its top-5, and how many
sentences' top-5 ids change). Speed: median / p90 / p99 session time of each method's graph on
--speed-model (e.g. a random-init distilbert-base-shape export; default --model) at a few shapes,
and its ratio to the dynamic int8 graph of the same run (--baseline: a graph to time as well, e.g.
an artifact's fast_int8.onnx built by an older export). Writes quant.json and quant.md under --out.

Examples:
  python -m bench quant --out bench/results/quant
  flock /tmp/deniro-bench.lock python -m bench quant --speed-model /tmp/base-export \\
      --baseline /tmp/base-export/fast_int8.onnx --out bench/results/quant
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deniro_rt.artifact import load_manifest
from deniro_rt.cli import config_parser, run_main, setup_logging
from deniro_rt.errors import DeniroError
from deniro_rt.models import DEFAULT_MODEL_DIR
from export.requantize import artifact_tokenizer
from export.rowquant import ROW_METHODS

from .config import dated_results_dir
from .openvino import OV_METHODS, ov_graph, ov_session

log = logging.getLogger(__name__)
SHAPES = ((1, 16), (1, 64), (32, 64))  # (batch, tokens) timed on --speed-model by default


@dataclass
class QuantConfig:
    model: str = str(DEFAULT_MODEL_DIR)  # trained artifact: agreement and drift
    speed_model: str | None = None  # artifact timed (default: --model)
    baseline: str | None = None  # an extra int8 graph timed and scored as "baseline"
    methods: str = "static,static-percentile,dynamic,nbits,weight-only"
    dataset: str = "../shared/data/imdb"
    sentences: int = 2000  # masked test sentences for top-1 / top-5
    perplexity_chunks: int = 200
    drift_sentences: int = 64
    calibration_sentences: int = 256
    timed_calls: int = 20  # per graph and shape (larger batches: a quarter, at least 8; calls_per_round)
    shapes: str = ",".join(f"{b}x{t}" for b, t in SHAPES)  # batch x tokens timed, e.g. 1x240,32x240 (reviews)
    out: str = field(default_factory=lambda: str(dated_results_dir()))


HELP = {
    "model": "trained artifact whose fp32 fast.onnx every method is built from and scored against (default: the "
    "shipped model)",
    "speed_model": "artifact whose graphs are timed, e.g. a random-init distilbert-base-shape export "
    "(default: --model)",
    "baseline": "an extra int8 graph (.onnx) timed and scored as 'baseline', e.g. an older export's fast_int8.onnx "
    "(default: none)",
    "methods": "comma-separated: python -m export's --int8-method names, openvino-f32, openvino-bf16, openvino-int8",
    "dataset": "folder of <split>.parquet files: calibration from train, scoring from test",
    "sentences": "masked test sentences scored for top-1 and top-5",
    "perplexity_chunks": "premasked test chunks scored for perplexity",
    "drift_sentences": "short sentences a sentence is padded into for the batch drift",
    "calibration_sentences": "static int8: train-split sentences that fix the activation scales",
    "timed_calls": "timed session runs per graph and shape (larger batches: a quarter, at least 8)",
    "shapes": "comma-separated <batch>x<tokens> shapes timed",
    "out": "report folder for quant.json and quant.md (default: bench/results/<machine>-<date>/)",
}


@dataclass(frozen=True)
class Prepared:
    """What every graph is scored against: the data and the fp32 reference."""

    data: object  # export.validate.ValidationSet
    reference: object  # export.validate.Reference (fp32 fast.onnx)
    drift_batch: object  # export.validate.MaskBatch of short sentences


def main(config: QuantConfig) -> dict:
    from bench.report import check_out, header, write

    check_methods(config.methods)
    check_out(Path(config.out))
    same = Path(config.speed_model or config.model) == Path(config.model)
    with tempfile.TemporaryDirectory(prefix="deniro-quant-") as tmp:
        graphs = build_methods(config, Path(config.model), Path(tmp) / "model")
        baseline = {"baseline": Path(config.baseline)} if config.baseline else {}
        agreement = score_all(config, {**graphs, **baseline} if same else graphs)
        timed = graphs if same else build_methods(config, Path(config.speed_model), Path(tmp) / "speed")
        speed = time_all(config, {**timed, **baseline})
    report = {
        "header": header("cpu", "python -m bench quant"),
        "config": asdict(config),
        "agreement": agreement,
        "speed": speed,
        "rows": [],
    }
    write_markdown_too(report, Path(config.out), write)
    return report


def build_methods(config: QuantConfig, folder: Path, out: Path) -> dict[str, Path]:
    """fp32, the optional baseline, and one graph per method built from folder's fast.onnx."""
    import onnx

    from export.config import INT8_METHODS, ExportConfig
    from export.optimize import quantize_fused
    from export.pipeline import calibration_feeds_for
    from export.weights import float_weights

    manifest = load_manifest(folder)
    out.mkdir(parents=True)
    tok = artifact_tokenizer(folder)
    export_config = ExportConfig(dataset=config.dataset, calibration_sentences=config.calibration_sentences)
    calibration = calibration_feeds_for(export_config, tok, manifest.vocab_size, manifest.max_positions)
    fp32 = float_weights(onnx.load(str(manifest.graph_path("fp32"))))  # int8-stored weights (shipped model)
    graphs = {"fp32": manifest.graph_path("fp32")}
    for name in config.methods.split(","):
        started = time.perf_counter()
        if name in OV_METHODS:  # OpenVINO compiles the fp32 graph or its NNCF int8 IR (bench/openvino.py)
            graphs[name] = ov_graph(name, manifest.graph_path("fp32"), out, calibration)
        elif name in ROW_METHODS:  # per-row int8 (issue 22): a rewrite of the fp32 graph, no calibration
            graphs[name] = row_graph(fp32, out / f"{name}.onnx", name)
        else:
            graphs[name] = out / f"{name}.onnx"
            quantize_fused(fp32, graphs[name], INT8_METHODS[name], calibration)
        log.info("built %s for %s in %.1f s", name, folder, time.perf_counter() - started)
    return graphs


def row_graph(fp32, dst: Path, name: str) -> Path:
    import copy

    import onnx

    from export.rowquant import row_quantize

    proto = copy.deepcopy(fp32)
    attention, passes = ROW_METHODS[name]
    row_quantize(proto, attention=attention, passes=passes)
    onnx.save(proto, str(dst))
    return dst


def prepare(config: QuantConfig, folder: Path) -> Prepared:
    from deniro_rt.data import mask_one_word, review_sentences
    from export import validate

    manifest, tok = load_manifest(folder), artifact_tokenizer(folder)
    texts, origin = validate.load_texts(config.dataset, "test", "text")
    spec = validate.ValidationSpec(
        manifest.vocab_size,
        manifest.max_positions,
        sentences=config.sentences,
        random_sequences=0,
        perplexity_chunks=config.perplexity_chunks,
        batch_size=32,
        seed=1,
    )
    data = validate.build_validation_set(tok, texts, origin, spec)
    fp32 = validate.session_for(manifest.graph_path("fp32"), ["CPUExecutionProvider"], "fp32")
    rng, rows = np.random.default_rng(11), []
    for review in texts[::7]:
        short = [s for s in review_sentences(review) if 5 <= len(s.split()) <= 20]
        masked = mask_one_word(short[0], rng, tok.mask_token) if short else None
        if masked is not None and len(rows) < config.drift_sentences:
            rows.append(np.asarray(tok(masked[0])["input_ids"], np.int64))
    batch = validate.pad_batch(rows, [np.flatnonzero(r == tok.mask_token_id) for r in rows], tok.pad_token_id or 0)
    return Prepared(data, validate.fast_reference(fp32, data, manifest.vocab_size), batch)


def score_all(config: QuantConfig, graphs: dict[str, Path]) -> dict[str, dict]:
    """Agreement with fp32 and batch drift of every graph on the trained model."""
    from export import validate

    prepared = prepare(config, Path(config.model))
    results = {}
    for name, path in graphs.items():
        session = open_graph(name, path)
        metrics = validate.score_fast_graph(session, prepared.data, prepared.reference)
        drift = validate.batch_drift(session, prepared.drift_batch)
        results[name] = {
            "top1_agreement": metrics["top1_agreement"],
            "top5_identical": metrics["top5_identical"],
            **decisive_top1(session, prepared),
            "perplexity": metrics["perplexity"],
            "perplexity_rel_diff": metrics["perplexity_rel_diff"],
            "rows": metrics["rows"],
            **drift,
            "size_mb": round(sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.exists()) / 1e6, 2),
        }
        log.info("%s: %s", name, results[name])
    return results


def open_graph(name: str, path: Path):
    """The session a method's graph is scored and timed with: OpenVINO for openvino-*, else onnxruntime, the
    fp32 graph as the runtime opens it: int8-stored weights folded once (without that, ORT's QDQ fusions run
    the shipped graph's MatMuls in int8: top-5 sets 86 % identical to fp32's, measured)."""
    from export import validate

    if name in OV_METHODS:
        return ov_session(path, OV_METHODS[name])
    return validate.session_for(path, ["CPUExecutionProvider"], "fp32" if name == "fp32" else None)


def check_methods(methods: str) -> None:
    from export.config import INT8_METHODS

    known = list(dict.fromkeys([*INT8_METHODS, *ROW_METHODS, *OV_METHODS]))  # the row methods are in both
    unknown = [name for name in methods.split(",") if name not in known]
    if unknown:
        raise DeniroError(f"--methods {','.join(unknown)}: unknown; choose from {', '.join(known)}")


def decisive_top1(session, prepared: Prepared, margin: float = 0.01) -> dict:
    """Top-1 agreement on the masks where fp32's first candidate leads its second by >= `margin` in
    probability (a swap of near-equal candidates is not a different answer), and how many masks that is."""
    from export import validate

    ref = np.concatenate(prepared.reference.logits)  # [n, vocab] fp32 log-probs
    second, first = np.exp(np.sort(ref, axis=1)[:, -2:].astype(np.float64)).T
    decisive = first - second >= margin
    ids = np.concatenate(
        [
            validate.run_fast(session, batch, np.zeros((len(batch.mask_index), 1), np.int64), 1)[1]
            for batch in prepared.data.queries
        ]
    )[:, 0]  # [n]
    same = ids == ref.argmax(axis=1)
    return {"top1_decisive": float(same[decisive].mean()), "decisive_masks": int(decisive.sum())}


ROUNDS = 4  # timing rounds per shape; each round times every graph in a block of calls


def time_all(config: QuantConfig, graphs: dict[str, Path]) -> dict[str, dict]:
    """p50/p90/p99 ms per shape, in ROUNDS rounds of one block of calls per graph (a warm-up call, then the
    timed ones), the block order rotated each round: a busy moment of a shared machine falls on every graph
    alike. Blocks, not call-by-call round-robin: ORT's and OpenVINO's thread pools spin on the cores after a
    call, which slowed the other runtime's next call (OpenVINO 1x164 12 -> 20 ms, measured)."""
    sessions = {name: open_graph(name, path) for name, path in graphs.items()}
    results: dict[str, dict] = {name: {} for name in graphs}
    for batch, tokens in shapes_of(config):
        feed = random_feed(batch, tokens)
        per_round = calls_per_round(config.timed_calls, batch)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for turn in range(ROUNDS):
            names = list(sessions)[turn % len(sessions) :] + list(sessions)[: turn % len(sessions)]
            for name in names:
                times[name] += timed_block(sessions[name], feed, per_round)
        for name, measured in times.items():
            results[name][f"{batch}x{tokens}"] = {
                **{q: round(float(np.percentile(measured, p)), 2) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))},
                "calls": len(measured),
            }
    return results


def calls_per_round(timed_calls: int, batch: int) -> int:
    """Calls a graph is timed for in each of the ROUNDS rounds: timed_calls in all at batch 1, a quarter of them
    at larger batches (each call costs ~batch times more), but never fewer than 2 a round, 8 in all: the old
    floor (3 in all, cut to 1 a round) timed batch-32 shapes 4 times, too few for a p90, let alone a p99."""
    wanted = timed_calls if batch == 1 else timed_calls // 4
    return max(2, -(-wanted // ROUNDS))


def timed_block(session, feed: dict, calls: int, warmup: int = 1) -> list[float]:
    """ms of `calls` consecutive calls after `warmup` untimed ones."""
    for _ in range(warmup):
        session.run(None, feed)
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, feed)
        out.append(1000 * (time.perf_counter() - started))
    return out


def shapes_of(config: QuantConfig) -> list[tuple[int, int]]:
    return [tuple(int(n) for n in shape.split("x")) for shape in config.shapes.split(",")]


def random_feed(batch: int, tokens: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 8000, (batch, tokens)).astype(np.int64)  # [batch, seq]
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "mask_index": np.arange(batch) * tokens + 3,
        "target_ids": np.zeros((batch, 1), np.int64),
        "top_k": np.array([5], np.int64),
    }


def write_markdown_too(report: dict, out: Path, write) -> None:
    from bench.report import table

    out.mkdir(parents=True, exist_ok=True)
    paths = write(report, out, "quant")
    speed = report["speed"]
    reference = next(name for name in ("baseline", "dynamic", "fp32") if name in speed)
    timed = shapes_of(QuantConfig(**report["config"]))
    shapes = " / ".join(f"{b}×{t}" for b, t in timed)
    lines = table(
        f"int8 options vs fp32 (speed: p50 of {reference} / p50 of the option, {shapes})",
        [
            "option",
            "top-1",
            "top-1 decisive",
            "top-5 identical",
            "ppl rel. diff",
            "max batch drift (texts)",
            f"speed vs {reference}",
            "MB",
        ],
        option_rows(report, reference),
    )
    ms = [[name] + [speed[name][f"{b}x{t}"]["p50"] for b, t in timed] for name in speed]
    lines += table("p50 ms per call", ["graph"] + [f"{b}×{t}" for b, t in timed], ms)
    paths["markdown"].write_text(paths["markdown"].read_text() + "\n" + "\n".join(lines) + "\n")


def option_rows(report: dict, reference: str) -> list[list]:
    """One row per option (scored, timed or both): agreement, drift, speed against `reference`, size."""
    speed, agreement = report["speed"], report["agreement"]
    nan = float("nan")
    unscored = {
        "top1_agreement": nan,
        "top5_identical": nan,
        "size_mb": "",
        "top1_decisive": nan,
        "perplexity_rel_diff": nan,
        "batch_drift": nan,
        "batch_topk_mismatches": "-",
    }
    rows = []
    for name in dict.fromkeys([*agreement, *speed]):
        a = agreement.get(name, unscored)
        ratios = [speed[reference][s]["p50"] / speed[name][s]["p50"] for s in speed.get(name, {})]
        rows.append(
            [
                name,
                f"{100 * a['top1_agreement']:.2f} %",
                f"{100 * a.get('top1_decisive', nan):.2f} %",
                f"{100 * a['top5_identical']:.2f} %",
                f"{a['perplexity_rel_diff']:.1e}",
                f"{a['batch_drift']:.1e} ({a['batch_topk_mismatches']})",
                " / ".join(f"{r:.2f}×" for r in ratios),
                a["size_mb"],
            ]
        )
    return rows


def cli(argv: list[str] | None = None) -> int:
    setup_logging()
    types = {"speed_model": str, "baseline": str}
    parser = config_parser(QuantConfig(), "python -m bench quant", __doc__, HELP, types)
    config = QuantConfig(**vars(parser.parse_args(argv)))
    from .report import INTERRUPTED

    return run_main(lambda: main(config), interrupted=INTERRUPTED)
