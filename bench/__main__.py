"""python -m bench: parity and speed of deniro_rt against PyTorch, transformers' pipeline and Optimum.

Commands:
  parity      PyTorch fp32 vs deniro_rt per precision: perplexity on premasked IMDB test chunks,
              top-1/top-5 agreement and log-prob differences on the sentence workload; exits 1
              when a threshold fails (fp32: top-5 identical >= 99.9 %, perplexity within 1e-4;
              fp16: top-1 >= 99.5 %, 0.5 %; int8: top-1 >= 97 %, 3 %)
  latency     batch-1 p50/p90/p99 of every engine per length bucket (and the model card's prompt)
  throughput  sentences/s of every engine per batch size and length bucket
  train       tokens/s and step time of train/'s loop (random init) per model shape
  all         all of the above in one process, one report
  load        HTTP load test of `python -m deniro_rt serve` (see `python -m bench load --help`)
  quant       int8 options vs fp32: agreement, largest batch drift, speed (see `python -m bench quant --help`)
  ray         Ray Data sentences/s vs plain fill, Ray Serve batching modes (see `python -m bench ray --help`)

Engines: pytorch-card (the model card's code, one text at a time), pytorch-batched (fp16 too on
CUDA), hf-pipeline (transformers pipeline("fill-mask")), optimum-ort (ORTModelForMaskedLM on the
artifact's model.onnx, same pipeline), deniro_rt (each precision the artifact has for the device).
Every measurement is end to end: strings in, tokenization, model, top-k, decoded suggestions out.

Reports: <out>/<command>.json (header with hardware and versions, every row), .md, .png
(the plot; "all" writes bench.*). Exit codes: 0 ok, 1 parity failed, 2 bad input.

Examples:
  python -m bench all --model exports/mini --device cpu
  python -m bench parity --model exports/deniro --torch-model runs/deniro
  python -m bench throughput --model exports/deniro --lengths 16,64 --throughput-sentences 2000
  python -m bench all --model exports/mini --quick --out /tmp/bench   # seconds: checks the harness
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import fields

from deniro_rt.cli import run_main, setup_logging

from .config import COMMANDS, DEVICES, QUICK, BenchConfig

HELP = {
    "model": "artifact folder made by `python -m export --onnx` (default: deniro_rt's shipped model)",
    "torch_model": "transformers save_pretrained folder for the PyTorch engines (default: source.model "
    "in the artifact's deniro.json, else the artifact itself if it holds the weights)",
    "device": "auto: cuda when PyTorch sees a GPU, else cpu",
    "engines": "comma-separated engines to time: pytorch-card, pytorch-batched, hf-pipeline, "
    "optimum-ort, deniro_rt, deniro_rt-model (the graph alone on prepared inputs), deniro_rt-arrays "
    "(fill_arrays: columns instead of dicts; not in the default list)",
    "precisions": "comma-separated deniro_rt precisions (default: fp32,int8 on CPU, fp32,fp16 on "
    "CUDA, those the artifact has, plus the runtime's own default for it here: bf16 = the fp32 graph on "
    "OpenVINO, CPU only, where the artifact's bf16 validation passed and this CPU runs it by default; "
    "elsewhere only when asked for)",
    "out": "report folder (default: bench/results/<machine>-<date>/)",
    "dataset": "folder of <split>.parquet files, or a hub dataset id (default: ../shared/data/imdb "
    "when present, else stanfordnlp/imdb)",
    "split": "split the sentences and parity chunks are cut from",
    "text_column": "column holding the text",
    "seed": "seed of the sentence choice and of the word masked in each",
    "lengths": "comma-separated token-length buckets (each holds texts of 3/4 L..L tokens)",
    "top_k": "predictions per mask every engine returns",
    "batch_sizes": "comma-separated throughput batch sizes (pytorch-card: always 1)",
    "warmup": "untimed calls before each measurement",
    "latency_samples": "timed batch-1 calls per engine and length",
    "throughput_sentences": "sentences timed per engine, batch and length (texts cycle if fewer)",
    "throughput_seconds": "stop each throughput measurement after this many seconds (none: all sentences)",
    "rounds": "time the engines this many times in turn (A, B, C, A, B, C, ...) and report each row's median round, "
    "so that ratios between engines share the machine's drift (1: each engine once)",
    "parity_texts": "test reviews chunked and premasked for the perplexity check",
    "parity_sentences": "workload sentences compared prediction by prediction",
    "chunk_size": "parity chunk length (default: the torch model's train_config.json, else 256)",
    "eval_seed": "parity masking seed (default: the torch model's train_config.json, else 1234)",
    "train_shapes": "comma-separated model shapes for `train` (train/config.py SHAPES: deniro, minilm, mini, tiny)",
    "train_steps": "timed optimizer steps per shape",
    "train_warmup": "untimed optimizer steps first",
    "train_batch_size": "chunks per step (default: the shape's preset)",
    "train_chunk_size": "tokens per chunk (default: the shape's preset)",
    "train_precision": "fp32 | bf16 | fp16 (Accelerate mixed precision)",
    "quick": "small counts everywhere, for CI: checks the harness, not the speed",
}
# Commands with their own options, each handed its arguments by run(): command -> module whose cli(argv) runs it
OWN_OPTIONS = {"load": "bench.load", "quant": "bench.quant", "ray": "bench.ray_bench"}
TYPES = {
    "torch_model": str,
    "precisions": str,
    "out": str,
    "throughput_seconds": float,
    "chunk_size": int,
    "eval_seed": int,
    "train_batch_size": int,
    "train_chunk_size": int,
    "model": str,
}


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    from .config import build_config

    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    own = ", ".join(OWN_OPTIONS)
    # the commands with their own options never reach this parser (run); listed so a wrong name lists them too
    parser.add_argument(
        "command", choices=COMMANDS + tuple(OWN_OPTIONS), help=f"what to run ({own}: see python -m bench <it> --help)"
    )
    defaults = BenchConfig()
    for f in fields(BenchConfig):
        if f.name == "command":
            continue
        default = getattr(defaults, f.name)
        quick = f"; --quick: {QUICK[f.name]}" if f.name in QUICK else ""
        note = (
            f" (default: {default}{quick})" if "(default:" not in HELP[f.name] else (f" ({quick[2:]})" if quick else "")
        )
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=HELP[f.name] + note)
            continue
        kind = TYPES.get(f.name) or {int: int, float: float}.get(type(default), str)
        parser.add_argument(
            flag,
            type=kind,
            default=argparse.SUPPRESS,
            help=HELP[f.name] + note,
            choices=DEVICES if f.name == "device" else None,
        )
    return build_config(vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in OWN_OPTIONS:  # load, quant, ray: their own options (bench/load.py, ...)
        return importlib.import_module(OWN_OPTIONS[argv[0]]).cli(argv[1:])
    setup_logging()
    config = parse_args(argv)
    from .report import INTERRUPTED
    from .run import main

    return run_main(lambda: main(config), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(run())
