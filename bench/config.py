"""BenchConfig: every knob of `python -m bench`, and the --quick values used by CI."""

from __future__ import annotations

import datetime
import platform
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from deniro_rt.data import IMDB_HUB_ID
from deniro_rt.providers import DEVICES  # noqa: F401 (bench's --device choices)

REPO = Path(__file__).resolve().parents[1]
LOCAL_IMDB = REPO.parent / "shared" / "data" / "imdb"
COMMANDS = ("parity", "latency", "throughput", "train", "all")
ENGINES = (
    "pytorch-card",
    "pytorch-batched",
    "hf-pipeline",
    "optimum-ort",
    "deniro_rt",
    "deniro_rt-arrays",
    "deniro_rt-model",
)
MODEL_CARD_PROMPT = "This is a great [MASK]!"


def dated_results_dir() -> Path:
    """bench/results/<machine>-<date>/: every bench command's default report folder. A new folder, never one of
    the committed ones (`bench load` and `bench ray` used to write into cpu-2core-serve/ and cpu-2core-ray/,
    replacing the reports the docs quote)."""
    machine = re.sub(r"[^A-Za-z0-9_.-]+", "-", platform.node() or "machine")
    return REPO / "bench" / "results" / f"{machine}-{datetime.date.today().isoformat()}"


def default_dataset() -> str:
    """The shared local IMDB copy when it is there (offline machines), else the hub id."""
    return str(LOCAL_IMDB) if (LOCAL_IMDB / "test.parquet").is_file() else IMDB_HUB_ID


@dataclass
class BenchConfig:
    command: str = "all"
    # what to benchmark
    model: str | None = None  # artifact folder; default: deniro_rt's bundled default model
    torch_model: str | None = None  # transformers checkpoint; default: the manifest's source.model
    device: str = "auto"  # auto | cpu | cuda
    engines: str = ",".join(e for e in ENGINES if e != "deniro_rt-arrays")  # subset of ENGINES (arrays: opt-in)
    precisions: str | None = None  # deniro_rt precisions; default: all the artifact has for the device
    out: str | None = None  # default: bench/results/<machine>-<date>/
    # workload
    dataset: str = ""  # filled by __post_init__: default_dataset()
    split: str = "test"
    text_column: str = "text"
    seed: int = 0  # sentence choice and the masked word of each sentence
    lengths: str = "16,64,128,256"  # token-length buckets ([CLS] and [SEP] included)
    top_k: int = 5
    # latency / throughput
    batch_sizes: str = "64"  # throughput batch sizes (pytorch-card is always 1)
    warmup: int = 10  # untimed calls before each measurement
    latency_samples: int = 200  # batch-1 calls timed per engine and length
    throughput_sentences: int = 10000  # sentences per engine, batch and length
    throughput_seconds: float | None = None  # stop a throughput measurement after this long
    rounds: int = 1  # time every engine this many times, interleaved; each row reports its median round
    # parity
    parity_texts: int = 500  # test reviews chunked and premasked for the perplexity check
    parity_sentences: int = 1000  # workload sentences compared top-k by top-k
    chunk_size: int | None = None  # default: the torch model's train_config.json, else 256
    eval_seed: int | None = None  # default: the torch model's train_config.json, else 1234
    # train
    train_shapes: str = "mini,deniro"  # train/config.py SHAPES, each with its preset's batch/chunk
    train_steps: int = 5  # timed optimizer steps per shape
    train_warmup: int = 2  # untimed steps before
    train_batch_size: int | None = None  # default: the preset's
    train_chunk_size: int | None = None  # default: the preset's
    train_precision: str = "fp32"  # fp32 | bf16 | fp16 (Accelerate mixed precision)
    quick: bool = False  # small counts everywhere (CI): checks the harness, not the speed

    def __post_init__(self) -> None:
        if not self.dataset:
            self.dataset = default_dataset()

    # ----------------------------------------------------------------- parsed lists
    def length_list(self) -> list[int]:
        return int_list(self.lengths, "--lengths")

    def batch_list(self) -> list[int]:
        return int_list(self.batch_sizes, "--batch-sizes")

    def engine_list(self) -> list[str]:
        from deniro_rt.errors import DeniroError

        names = [e.strip() for e in self.engines.split(",") if e.strip()]
        unknown = [e for e in names if e not in ENGINES]
        if unknown:
            raise DeniroError(f"--engines: unknown {', '.join(unknown)} (known: {', '.join(ENGINES)})")
        return names

    def check_numbers(self) -> None:
        from deniro_rt.cli import check_least

        check_least(self, LEAST, above_zero=("throughput_seconds",))

    def cli(self) -> str:
        """The command line that gives this config (flags that differ from the defaults)."""
        defaults = build_config({"quick": self.quick})
        parts = ["python -m bench", self.command] + (["--quick"] if self.quick else [])
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("command", "quick") or value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            parts.append(flag if value is True else f"{flag} {value}")
        return " ".join(parts)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else dated_results_dir()


# The least value of every numeric knob (None, where allowed, means the default).
LEAST = dict(
    top_k=1, warmup=0, latency_samples=1, throughput_sentences=1, rounds=1, parity_texts=1, parity_sentences=1,
    chunk_size=2, train_steps=1, train_warmup=0, train_batch_size=1, train_chunk_size=2,
)  # fmt: skip


def int_list(text: str, flag: str) -> list[int]:
    from deniro_rt.errors import DeniroError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise DeniroError(f"{flag} takes comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise DeniroError(f"{flag} needs positive integers, got {text!r}")
    return values


# What --quick changes (explicit flags still win): seconds instead of minutes, for CI.
QUICK: dict = dict(
    warmup=2,
    latency_samples=8,
    throughput_sentences=48,
    batch_sizes="16",
    parity_texts=40,
    parity_sentences=64,
    lengths="16,64",
    train_shapes="tiny",
    train_steps=2,
    train_warmup=1,
    train_batch_size=4,
)


def build_config(overrides: dict) -> BenchConfig:
    quick = QUICK if overrides.get("quick") else {}
    return BenchConfig(**{**quick, **overrides})


class QuickDefaults:
    """Dataclass mixin: `quick=True` replaces the fields named in the class's QUICK table (small counts
    that check a harness, not the speed)."""

    QUICK: ClassVar[dict] = {}
    quick: bool

    def __post_init__(self) -> None:
        if self.quick:
            for name, value in self.QUICK.items():
                setattr(self, name, value)
