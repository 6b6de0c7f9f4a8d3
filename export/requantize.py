"""python -m export.requantize: rebuild an artifact's int8 graph from its fp32 fast.onnx (no torch checkpoint).

For artifacts whose PyTorch source is not at hand (the shipped model): quantizes fast.onnx with
--int8-method, validates the result against fast.onnx itself (ONNX fp32 as the reference, int8
thresholds of export/validate.py, batch invariance included), then replaces fast_int8.onnx and updates
deniro.json (sha256, size, fused ops, validation, export_config) per the deniro_rt.artifact contract.
Nothing is changed if validation fails (exit 1) or on Ctrl-C (exit 130).

Example:
  python -m export.requantize --model deniro_rt/models/default --dataset ../shared/data/imdb
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from deniro_rt.artifact import FAST_GRAPHS, MANIFEST, load_manifest, sha256_file, verify_sources
from deniro_rt.cli import check_least, run_main, setup_logging
from deniro_rt.errors import DeniroError
from deniro_rt.files import uninterruptible

from .config import DEFAULT_INT8_METHOD, INT8_METHODS, ExportConfig

# Named, not __name__: run as `python -m export.requantize` this module is __main__, a logger below the WARNING
# root, and the closing "requantized ..." line with the validation numbers never printed.
log = logging.getLogger("export.requantize")
EXIT_VALIDATION = 1


@dataclass
class RequantizeConfig:
    model: str = "deniro_rt/models/default"  # artifact folder holding fast.onnx and deniro.json
    int8_method: str = DEFAULT_INT8_METHOD
    dataset: str = "../shared/data/imdb"  # calibration (train split) and validation (test split) text
    calibration_sentences: int = 256
    sentences: int = 512  # validation sentences
    perplexity_chunks: int = 64
    seed: int = 0


def main(config: RequantizeConfig) -> Path:
    """Re-quantize `config.model`'s int8 graph in place; returns the folder."""
    from onnx import load

    from .optimize import quantize_fused
    from .pipeline import versions
    from .validate import ValidationFailed, summary
    from .weights import float_weights

    check_least(config, dict(calibration_sentences=16, sentences=1, perplexity_chunks=0))
    manifest = load_manifest(config.model)
    verify_sources(manifest)
    texts, origin = validation_texts(config)
    tok = artifact_tokenizer(manifest.folder)
    method = INT8_METHODS[config.int8_method]
    calibration = calibration_feeds(config, tok, manifest) if method.kind == "static" else None  # static only
    with tempfile.TemporaryDirectory(dir=manifest.folder, prefix=".requantize-") as stage:
        staged = Path(stage) / FAST_GRAPHS["int8"]
        counts = quantize_fused(float_weights(load(str(manifest.graph_path("fp32")))), staged, method, calibration)
        result = validate_against_fp32(config, manifest, staged, tok, (texts, origin))
        if not result["passed"]:
            raise ValidationFailed(
                f"int8 validation failed, {manifest.folder} unchanged: " + "; ".join(result["failed"])
            )
        # Graph and manifest are swapped together: the new manifest (hash of the staged graph) is written
        # first to a temp file, then both renames follow, so no failure leaves a graph its manifest refuses.
        # Ctrl-C between the renames left a graph its manifest refuses: it is ignored for them.
        new_manifest = staged_manifest(manifest, staged, counts, result, config, versions())
        with uninterruptible():
            os.replace(staged, manifest.folder / FAST_GRAPHS["int8"])
            os.replace(new_manifest, manifest.folder / MANIFEST)
    log.info("requantized %s (%s): %s", manifest.folder, config.int8_method, summary(result))
    return manifest.folder


def calibration_feeds(config: RequantizeConfig, tok, manifest):
    """The IMDB train sentences that fix a static int8 graph's activation scales."""
    from .pipeline import calibration_feeds_for

    export_config = ExportConfig(
        dataset=config.dataset,
        calibration_sentences=config.calibration_sentences,
        int8_method=config.int8_method,
        seed=config.seed,
    )
    return calibration_feeds_for(export_config, tok, manifest.vocab_size, manifest.max_positions)


def artifact_tokenizer(folder: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def validation_texts(config: RequantizeConfig) -> tuple[list[str], str]:
    """The test reviews the int8 graph is validated on, before any work. Without them (a --dataset that does
    not load) the set was empty after calibrating and quantizing, and the error named --random-sequences, a
    flag of python -m export that this command does not have."""
    from .validate import load_texts

    texts, origin = load_texts(config.dataset, "test", "text")
    if not texts:
        raise DeniroError(
            f"the int8 graph is validated on review text: {origin}; pass --dataset with a folder of "
            "<split>.parquet files (e.g. ../shared/data/imdb)"
        )
    return texts, origin


def validate_against_fp32(config: RequantizeConfig, manifest, int8_graph: Path, tok, test: tuple) -> dict:
    """int8 vs the artifact's own fp32 graph on IMDB test sentences (`test`: texts and their origin) and
    premasked chunks."""
    from . import validate

    texts, origin = test
    spec = validate.ValidationSpec(
        manifest.vocab_size,
        manifest.max_positions,
        sentences=config.sentences,
        random_sequences=0,
        perplexity_chunks=config.perplexity_chunks,
        seed=config.seed,
    )
    data = validate.build_validation_set(tok, texts, origin, spec)
    cpu = ["CPUExecutionProvider"]
    fp32 = validate.session_for(manifest.graph_path("fp32"), cpu, "fp32")
    ref = validate.fast_reference(fp32, data, manifest.vocab_size)
    metrics = validate.score_fast_graph(validate.session_for(int8_graph, cpu), data, ref)
    return {
        **validate.verdict("int8", metrics),
        **data.record(),
        "reference": f"{FAST_GRAPHS['fp32']} (fp32 ONNX; re-quantized without the torch checkpoint)",
    }


def staged_manifest(
    manifest, staged: Path, counts: dict, result: dict, config: RequantizeConfig, found_versions: dict
) -> Path:
    """The manifest for the staged int8 graph (hash, size, op counts, validation), in a temp file beside it."""
    raw, name = dict(manifest.raw), FAST_GRAPHS["int8"]
    raw["graphs"] = {**raw["graphs"], "int8": name}  # an fp32-only artifact gains its int8 graph
    raw["files"] = {**raw["files"], name: sha256_file(staged)}
    raw["sizes"] = {**raw.get("sizes", {}), name: staged.stat().st_size}
    raw["fused_ops"] = {**raw["fused_ops"], "int8": counts}
    raw["validation"] = {**raw["validation"], "int8": result}
    raw["export_config"] = {
        **raw["export_config"],
        "int8_method": config.int8_method,
        "calibration_sentences": config.calibration_sentences,
    }
    raw["requantized"] = {"config": asdict(config), "versions": found_versions}
    temp = staged.with_name(MANIFEST)
    temp.write_text(json.dumps(raw, indent=2) + "\n")
    return temp


COUNT_HELP = {
    "calibration_sentences": "static int8: train-split sentences that fix the activation scales",
    "sentences": "test-split sentences, one word masked each, compared with fast.onnx",
    "perplexity_chunks": "premasked test chunks scored for perplexity",
    "seed": "sentence choice, masked words and chunk masking",
}


def parse_args(argv: list[str] | None = None) -> RequantizeConfig:
    defaults = RequantizeConfig()
    parser = argparse.ArgumentParser(
        prog="python -m export.requantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=defaults.model, help=f"artifact folder (default: {defaults.model})")
    parser.add_argument(
        "--int8-method",
        # the per-row methods rebuild the graph from the PyTorch model: python -m export --int8-method row...
        choices=[name for name, method in INT8_METHODS.items() if method.kind != "row"],
        default=defaults.int8_method,
        help=f"see python -m export --help (default: {defaults.int8_method})",
    )
    parser.add_argument(
        "--dataset",
        default=defaults.dataset,
        help=f"folder of <split>.parquet: calibration from train, validation from test (default: {defaults.dataset})",
    )
    for name, text in COUNT_HELP.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(defaults, name),
            help=f"{text} (default: {getattr(defaults, name)})",
        )
    return RequantizeConfig(**vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    from .validate import ValidationFailed

    setup_logging(logging.WARNING, ours=("export", "deniro_rt"), quiet=logging.ERROR)
    config = parse_args(argv)
    # the graph is written in a temp folder inside --model, then renamed over the old one with its manifest
    unchanged = f"interrupted: {config.model} unchanged"
    return run_main(lambda: main(config), {ValidationFailed: EXIT_VALIDATION}, interrupted=unchanged)


if __name__ == "__main__":
    sys.exit(run())
