"""`python -m export --onnx`: trace, optimise, quantize, validate and write a deniro_rt artifact folder.

Everything is written to a temporary folder next to --output and renamed into place only after
validation passed, so a failed export never leaves a half-written or wrong artifact behind.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np

from deniro_rt.artifact import FAST_GRAPHS, FORMAT, FORMAT_VERSION, FULL_GRAPH, MANIFEST, TOKENIZER_FILE, sha256_file
from deniro_rt.data import untruncated
from deniro_rt.errors import DeniroError
from deniro_rt.files import staged

from .bf16 import KEY as BF16_KEY
from .bf16 import Bf16Config, bf16_record
from .card import CardInfo, write_card
from .config import INT8_METHODS, ExportConfig, check_config, resolve_providers
from .graphs import export_fast, export_full
from .model import Source, load_source
from .optimize import Arch, build_graph, calibration_feeds
from .reference import write_reference
from .rowquant import build_any_graph
from .validate import (
    FULL_GRAPH_KEY,
    ValidationFailed,
    ValidationSet,
    ValidationSpec,
    build_validation_set,
    failures,
    load_texts,
    random_rows,
    sentence_rows,
    summary,
    validate,
)
from .weights import round_weights, rounding_cost, rounding_scheme, store_int8

log = logging.getLogger(__name__)
RAW = ".raw"  # traced, unoptimised graphs; removed before the folder is published
COUNT_REVIEWS = 5000  # --table-8bit-rows: train reviews the piece frequencies are counted on (as train.prune)
VERSIONED = ("torch", "transformers", "onnxruntime", "onnx", "optimum", "optimum-onnx", "numpy", "tokenizers")


def precision_providers(config: ExportConfig) -> dict[str, list[str]]:
    """onnxruntime providers per precision, --device resolved once (errors before any work)."""
    device = resolve_providers(config.device)
    # Dynamically quantized ops (MatMulInteger, DynamicQuantizeLinear) have CPU kernels only.
    return {p: ["CPUExecutionProvider"] if p == "int8" else device for p in config.precisions()}


def validation_set(config: ExportConfig, source: Source) -> ValidationSet:
    texts, origin = load_texts(config.dataset, config.split, config.text_column)
    cfg = source.model.config
    spec = ValidationSpec(
        cfg.vocab_size,
        cfg.max_position_embeddings,
        sentences=config.sentences,
        random_sequences=config.random_sequences,
        perplexity_chunks=config.perplexity_chunks,
        chunk_size=config.chunk_size,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    return build_validation_set(source.tokenizer, texts, origin, spec)


def needs_calibration(config: ExportConfig) -> bool:
    return "int8" in config.precisions() and INT8_METHODS[config.int8_method].kind == "static"


def calibration_set(config: ExportConfig, source: Source) -> list[dict]:
    cfg = source.model.config
    return calibration_feeds_for(config, source.tokenizer, cfg.vocab_size, cfg.max_position_embeddings)


def calibration_feeds_for(config: ExportConfig, tok, vocab_size: int, max_positions: int) -> list[dict]:
    """Fast-graph feeds of masked IMDB sentences that fix the static int8 activation scales.

    From the train split when the dataset has one (the validation sentences come from --split), else
    from --split with another seed; random ids when there is no text at all. tok: a transformers tokenizer.
    """
    texts, origin = load_texts(config.dataset, "train", config.text_column)
    if not texts:
        texts, origin = load_texts(config.dataset, config.split, config.text_column)
    rng = np.random.default_rng(config.seed + 1)
    max_len = min(128, max_positions)
    order = [texts[i] for i in rng.permutation(len(texts))]
    rows = sentence_rows(tok, order, config.calibration_sentences, rng, max_len)
    if not rows:  # no text: random ids with one mask each
        rows = random_rows(config.calibration_sentences, vocab_size, rng, max_len)
        for row in rows:
            row[int(rng.integers(len(row)))] = tok.mask_token_id
    seq_len = max(len(r) for r in rows)
    log.info("int8 calibration: %d sentences (%s)", len(rows), origin)
    return calibration_feeds(rows, tok.mask_token_id, tok.pad_token_id or 0, seq_len)


def main(config: ExportConfig) -> Path:
    """Export `config.model` to the artifact folder `config.output`; returns the folder."""
    started = time.perf_counter()
    out = check_config(config)
    providers = precision_providers(config)
    log.info("loading %s", config.model)
    source = load_source(config.model, config.tokenizer, config.attn_implementation)
    data = validation_set(config, source) if config.validate else None
    if config.weights == "int8":
        source = rounded(source, data, table_rows_8bit(config, source))
    with staged(out) as stage:  # published only if everything below succeeds
        build_artifact(config, source, data, providers, stage, started)
    report(out, time.perf_counter() - started)
    return out


def table_rows_8bit(config: ExportConfig, source: Source) -> np.ndarray | None:
    """--table-8bit-rows N: the ids of the N pieces most frequent on --dataset's train reviews (specials first)."""
    if config.table_8bit_rows is None:
        return None
    from train.prune import sample_train_texts
    from train.shrink import piece_order

    vocab, dim = source.model.get_input_embeddings().weight.shape
    if dim % 2:
        raise DeniroError(
            f"--table-8bit-rows stores two 4-bit values a byte and this model's table is {dim} wide (odd); "
            f"export without --table-8bit-rows"
        )
    if config.table_8bit_rows >= vocab:
        raise DeniroError(
            f"--table-8bit-rows {config.table_8bit_rows} keeps every one of the {vocab} rows at 8 bits; "
            f"pass fewer, or leave the flag out for an all-8-bit table"
        )
    texts = sample_train_texts(config.dataset, COUNT_REVIEWS, config.seed)
    order = piece_order(source.tokenizer, texts)  # [vocab] ids, most frequent first
    log.info("table: %d most frequent pieces of %d train reviews 8-bit", config.table_8bit_rows, len(texts))
    return np.sort(order[: config.table_8bit_rows])


def rounded(source: Source, data: ValidationSet | None, table_8bit: np.ndarray | None) -> Source:
    """--weights int8: the source model rounded in place, and what that cost against the unrounded model."""
    if data is None:  # --no-validate: nothing to measure the cost on
        names = round_weights(source.model, table_8bit)
        scheme = rounding_scheme(table_8bit)
        rounding = {"scheme": scheme, "matrices": len(names), "metrics": None}
        return replace(source, rounding=rounding, table_8bit=table_8bit)
    names, result = rounding_cost(source.model, data, table_8bit)
    log.info("weights rounded to int8: %d matrices; %s", len(names), summary(result))
    if not result["passed"]:
        what, fix = (
            ("int8", "--weights fp32")
            if table_8bit is None
            else (
                f"int8 with {len(table_8bit)} table rows at 8 bits and the rest at 4",
                "a larger --table-8bit-rows, or without it",
            )
        )
        raise ValidationFailed(
            f"rounding the weights to {what} changed the model too much, nothing written: "
            + "; ".join(result["failed"])
            + f"; export with {fix}"
        )
    return replace(source, rounding=result, table_8bit=table_8bit)


def build_artifact(
    config: ExportConfig,
    source: Source,
    data: ValidationSet | None,
    providers: dict[str, list[str]],
    stage: Path,
    started: float,
) -> None:
    fused = write_graphs(config, source, stage)
    validation = {}
    if data is not None:
        full = stage / FULL_GRAPH if config.full_graph else None
        graphs = {p: stage / FAST_GRAPHS[p] for p in config.precisions()}
        validating = time.perf_counter()
        validation = validate(source.model, graphs, data, providers, full)
        log.info("validated in %.1f s", time.perf_counter() - validating)
        failed = failures(validation)
        if failed:
            raise ValidationFailed(f"validation failed, nothing written to {config.output}: " + " | ".join(failed))
        validation.update(bf16_validation(config, source, stage, providers))
    save_tokenizer(source.tokenizer, stage)
    write_reference(
        source.model,
        source.tokenizer,
        stage,
        f"the transformers model exported from {config.model} "
        f"(weights {config.weights}), each text alone; written by python -m export",
    )
    source.model.config.save_pretrained(str(stage))  # config.json: Optimum loads model.onnx with it
    manifest = build_manifest(config, source, fused, validation, stage)
    manifest["export_seconds"] = round(time.perf_counter() - started, 1)
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # README.md: the folder's model card, derived from the manifest (not hashed), named after the output folder
    # (the stage is a temp folder beside it)
    write_card(stage, manifest, CardInfo(name=Path(config.output).expanduser().resolve().name))


def bf16_validation(config: ExportConfig, source: Source, stage: Path, providers: dict[str, list[str]]) -> dict:
    """{"bf16": record} where the fp32 graph was validated on CPU and this machine runs bf16 (export/bf16.py),
    on the validation dataset; else {} (bf16 is then not this artifact's CPU default)."""
    if providers.get("fp32", [""])[0] != "CPUExecutionProvider":
        return {}
    cfg = source.model.config
    check = Bf16Config(str(stage), config.dataset, config.split, config.text_column, seed=config.seed)
    graph = stage / FAST_GRAPHS["fp32"]
    try:
        record = bf16_record(check, source.tokenizer, graph, cfg.vocab_size, cfg.max_position_embeddings)
    except DeniroError as exc:  # advisory: the export stands, bf16 is just not this artifact's default
        log.warning("bf16 not checked (fp32 stays the CPU default): %s", exc)
        return {}
    return {} if record is None else {BF16_KEY: record}


def save_tokenizer(tokenizer, folder: Path) -> None:
    """tokenizer.json only (no vocab.txt copy), with truncation and padding off: a source's saved settings
    (sentence-transformers' MiniLM truncates at 128) would cut long texts silently for anyone who reads the
    artifact's tokenizer.json with `tokenizers`; deniro_rt refuses or windows long texts itself."""
    tokenizer.save_pretrained(str(folder), legacy_format=False)
    untruncated(tokenizer.backend_tokenizer).save(str(folder / TOKENIZER_FILE))  # overwrites the saved one


def write_graphs(config: ExportConfig, source: Source, stage: Path) -> dict[str, dict[str, int]]:
    """Trace once per graph kind, then build each precision from the traced fp32 graph."""
    raw = stage / RAW
    raw.mkdir()
    arch = Arch.of(source.model.config)
    started = time.perf_counter()
    export_fast(source.model, raw / FAST_GRAPHS["fp32"], config.opset)
    log.info("traced the fast graph in %.1f s", time.perf_counter() - started)
    calibration = calibration_set(config, source) if needs_calibration(config) else None
    fused = {
        p: build_any_graph(
            p,
            raw / FAST_GRAPHS["fp32"],
            stage / FAST_GRAPHS[p],
            arch,
            config.fuse,
            config.per_channel,
            config.int8_method,
            calibration,
        )
        for p in config.precisions()
    }
    if config.full_graph:
        export_full(source.model, raw / FULL_GRAPH, config.opset)
        fused[FULL_GRAPH_KEY] = build_graph(
            "fp32", raw / FULL_GRAPH, stage / FULL_GRAPH, arch, config.fuse, config.per_channel
        )
    if config.weights == "int8":  # the fp32 graphs of the rounded model: int8 storage, same values
        for name in (FAST_GRAPHS["fp32"], FULL_GRAPH if config.full_graph else None):
            if name:
                store_int8(stage / name, source.table_8bit)
    shutil.rmtree(raw)
    return fused


def build_manifest(config: ExportConfig, source: Source, fused: dict, validation: dict, stage: Path) -> dict:
    """deniro.json: the keys deniro_rt.artifact documents (plus sizes and export time)."""
    tok, cfg = source.tokenizer, source.model.config
    files = sorted(p for p in stage.iterdir() if p.is_file() and p.name != MANIFEST)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (cfg.pad_token_id or 0)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "graphs": {p: FAST_GRAPHS[p] for p in config.precisions()},
        "full_graph": FULL_GRAPH if config.full_graph else None,
        "files": {p.name: sha256_file(p) for p in files},
        "sizes": {p.name: p.stat().st_size for p in files},
        "vocab_size": cfg.vocab_size,
        "max_positions": cfg.max_position_embeddings,
        "mask_token": tok.mask_token,
        "mask_token_id": tok.mask_token_id,
        "pad_token_id": pad_id,
        "top_k_max": None,
        "opset": config.opset,
        "fused_ops": fused,
        "validation": validation,
        "source": {"model": config.model, "sha256": source.sha256, "weights": source.weights},
        "weight_rounding": source.rounding,
        "export_config": config.to_json(),
        "versions": versions(),
    }


def versions(packages: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    """Installed versions of `packages` (None where missing), plus Python's."""
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def report(out: Path, seconds: float) -> None:
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    total = sum(sizes.values())
    log.info("exported %s in %.1f s, %.1f MB:", out, seconds, total / 1e6)
    for name, size in sizes.items():
        log.info("  %-24s %9.2f MB", name, size / 1e6)
