r"""python -m export: write a self-contained ONNX artifact folder that deniro_rt serves without torch.

Writes fast.onnx (encoder + LM head on the [MASK] rows + log-softmax + top-k, fp32) and one fast graph
per extra --precision (fast_int8.onnx for CPU, fast_fp16.onnx for CUDA), model.onnx (the standard
Optimum fill-mask graph, unless --no-full-graph), the tokenizer, config.json and deniro.json (the
manifest: sha256 of every file, fused-op counts, validation results, versions). Every graph is
validated against PyTorch first; if a threshold fails nothing is written and the exit code is 1.

Examples:
  python -m export --onnx --model runs/mini --output exports/mini --dataset ../shared/data/imdb
  python -m export --onnx --model runs/mini --output exports/mini-int8 --precision fp32,int8   # + int8 (opt-in)
  python -m export --onnx --model runs/deniro --output exports/deniro-gpu --device cuda   # fp32 + fp16
  python -m export --onnx --model runs/minilm-20k --output deniro_rt/models/default --weights int8 \
      --no-full-graph --dataset ../shared/data/imdb --overwrite   # the shipped model (README)
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from deniro_rt.cli import run_main, setup_logging

from .config import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_PRECISIONS,
    DEVICES,
    INT8_METHODS,
    WEIGHT_STORAGE,
    ExportConfig,
    split_precisions,
)

EXIT_VALIDATION = 1
HELP = {
    "onnx": "export to ONNX (the only format; required)",
    "model": "save_pretrained folder of a DistilBertForMaskedLM (e.g. a finished python -m train's --output, not "
    "one of its checkpoints) or hub id",
    "tokenizer": "folder or hub id of the tokenizer (default: --model's)",
    "output": "artifact folder to write (required, no default); built in a temp folder next to it and "
    "renamed into place on success",
    "overwrite": "replace a non-empty --output",
    "precision": "fast graphs to write, repeatable or comma-separated: fp32 (always written), int8 (CPU), "
    "fp16 (CUDA only); default: " + "; ".join(f"{d}: {','.join(p)}" for d, p in DEFAULT_PRECISIONS.items()),
    "device": "execution provider the graphs are validated on; cuda needs onnxruntime-gpu whose CUDA starts "
    "(a session that falls back to the CPU is refused)",
    "full_graph": "skip model.onnx (the Optimum-layout graph with logits at every position)",
    "fuse": "skip ONNX Runtime's fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm); without "
    "this flag the export fails if attention is not fused",
    "attn_implementation": "transformers attention implementation traced; auto picks the one whose graph "
    "onnxruntime fuses: sdpa with transformers 4.x, eager with 5.x",
    "opset": "ONNX opset, 14 to 23",
    "per_channel": "int8: one scale per weight tensor instead of per output channel",
    "int8_method": "how the int8 graph is built: static (QDQ, activation scales fixed by calibration: "
    "batch-invariant), static-percentile (the same, 99.999th-percentile ranges), dynamic (scales "
    "per call over the whole batch: answers depend on batch-mates), nbits (MatMulNBits 8-bit "
    "weights, int8 compute with per-row activation scales), weight-only (MatMulNBits 8-bit "
    "weights, fp32 compute), row / row-ffn (activation scales per token row, computed per call from that row "
    "alone: batch-invariant, no calibration; -ffn: the fused Attention's QKV projection stays fp32), row2 / row2-ffn "
    "(the same plus a second int8 pass for the rounding remainder); measured in docs/precision.md 'int8 on CPU: "
    "the options, measured'",
    "weights": "fp32: weights as trained; int8: every weight matrix rounded to 8 bits (one scale per row) "
    "in PyTorch before tracing and stored as int8 in the fp32 graphs, which ONNX Runtime "
    "dequantizes once at load (fp32 compute, ~4x smaller files); the rounding's cost against "
    "the unrounded model is measured and gated (manifest: weight_rounding)",
    "table_8bit_rows": "with --weights int8: the word-embedding table keeps 8-bit rows only for the N pieces most "
    "frequent on --dataset's train reviews and stores every other row at 4 bits (levels -7..7, one scale per row), "
    "so a whole vocabulary fits where pruning it was needed (issue 23: 2,000 rows cost the shipped model +0.4 %% "
    "perplexity, pruning to 20,000 pieces 2.4 %%); default: every row 8-bit",
    "calibration_sentences": "static int8: IMDB sentences (--dataset's train split, else --split) that fix "
    "the activation scales",
    "validate": "skip the comparison with PyTorch",
    "dataset": "hub dataset id or folder of <split>.parquet files with the validation text (e.g. "
    "../shared/data/imdb); random token ids stand in when a hub id cannot be reached or a folder lacks the "
    "split; a folder that does not exist, or a damaged split file, is an error",
    "split": "split the validation sentences and chunks come from",
    "text_column": "column holding the text",
    "sentences": "IMDB sentences with one word masked (one per review, seeded)",
    "random_sequences": "random-id sequences with 1-3 masks each",
    "perplexity_chunks": "chunks masked once (whole-word, seeded) and scored for perplexity",
    "chunk_size": "tokens per perplexity chunk",
    "batch_size": "sequences per validation batch",
    "seed": "seed of the validation sample and masks",
}
NEGATED = {"full_graph", "fuse", "validate", "per_channel"}  # default on: the flag is --no-...
INT_OPTIONS = {"table_8bit_rows"}  # integers whose default is None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = ExportConfig()
    choices = {
        "device": list(DEVICES),
        "attn_implementation": list(ATTN_IMPLEMENTATIONS),
        "int8_method": list(INT8_METHODS),
        "weights": list(WEIGHT_STORAGE),
    }
    for f in fields(ExportConfig):
        default = getattr(defaults, f.name)
        flag = "--" + ("no-" if f.name in NEGATED else "") + f.name.replace("_", "-")
        if f.name == "precision":
            parser.add_argument(flag, action="append", metavar="P[,P]", help=HELP[f.name])
        elif isinstance(default, bool):
            action = "store_false" if f.name in NEGATED else "store_true"
            note = f" (default: {f.name.replace('_', ' ')} on)" if f.name in NEGATED else " (default: off)"
            parser.add_argument(flag, dest=f.name, action=action, default=default, help=HELP[f.name] + note)
        else:
            kind = int if isinstance(default, int) or f.name in INT_OPTIONS else str
            note = "" if default is None else f" (default: {default})"  # None: the help text says it
            parser.add_argument(
                flag, dest=f.name, type=kind, choices=choices.get(f.name), default=default, help=HELP[f.name] + note
            )
    return parser


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    values = vars(build_parser().parse_args(argv))
    values["precision"] = split_precisions(values["precision"])
    return ExportConfig(**values)


def run(argv: list[str] | None = None) -> int:
    # Our own progress at INFO; onnxruntime's optimizer and quantizer log every rewrite at INFO.
    # offline, the hub libraries warn once per retry: only their errors are shown
    setup_logging(logging.WARNING, ours=("export", "deniro_rt"), quiet=logging.ERROR)
    config = parse_args(argv)
    from .validate import ValidationFailed  # numpy only: its exit code is needed before the call

    nothing = f"interrupted: nothing written to {config.output}"  # the artifact is staged beside it, then published
    return run_main(lambda: export_model(config), {ValidationFailed: EXIT_VALIDATION}, interrupted=nothing)


def export_model(config: ExportConfig) -> Path:
    # imported under run_main: transformers, torch and onnx take seconds, and Ctrl-C meanwhile was a traceback
    from transformers.utils import logging as hf_logging

    from .pipeline import main

    hf_logging.set_verbosity_error()  # e.g. "weights not initialized": we raise our own error for that
    return main(config)


if __name__ == "__main__":
    sys.exit(run())
