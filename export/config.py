"""ExportConfig: every knob of `python -m export`, and the checks that need no model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from deniro_rt.artifact import FAST_GRAPHS, MANIFEST
from deniro_rt.cli import check_least
from deniro_rt.data import looks_like_path
from deniro_rt.errors import DeniroError
from deniro_rt.files import check_output_folder
from deniro_rt.providers import HARDWARE, session_providers

DEVICES = HARDWARE  # export builds for a device, never "auto"
# int8 is opt-in on CPU, as in the runtime: the trained MiniLM's static int8 graph agreed with fp32 on
# 80 % of top-1s (README, issue 12), and a default that fails validation would make the plain command fail.
DEFAULT_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager")
# 14: the first opset with scaled_dot_product_attention; 23: the highest torch 2.13's exporter writes
OPSETS = range(14, 24)
WEIGHT_STORAGE = ("fp32", "int8")  # how the fp32 graphs store their weight matrices (export/weights.py)


@dataclass(frozen=True)
class Int8Method:
    """One way to build the int8 fast graph (docs/precision.md: "int8 on CPU: the options, measured")."""

    kind: str  # static (QDQ, fixed scales) | dynamic (scales per call) | nbits (MatMulNBits 8-bit weights) | row
    calibration: str = "MinMax"  # static: MinMax | Percentile | Entropy
    accuracy_level: int = 4  # nbits: 4 = int8 compute, activations scaled per row and block; 0 = fp32 compute
    block_size: int = 32  # nbits: weights per scale


INT8_METHODS = {
    # Fixed activation scales calibrated on IMDB sentences: a text's answer cannot depend on its batch-mates.
    # Ranges from the 99.999th percentile (the default: closer to fp32 on the trained model) or min/max.
    "static": Int8Method("static"),
    "static-percentile": Int8Method("static", calibration="Percentile"),
    # Scales computed per call over the whole batch tensor: answers depend on the batch (onnxruntime #10111).
    "dynamic": Int8Method("dynamic"),
    "nbits": Int8Method("nbits"),
    "weight-only": Int8Method("nbits", accuracy_level=0),
    # Scales per token row, computed per call from that row only: batch-invariant, no calibration
    # (export/rowquant.py, issue 22). row2: a second int8 pass for the rounding remainder (~16-bit activations).
    **{name: Int8Method("row") for name in ("row", "row-ffn", "row2", "row2-ffn")},
}
DEFAULT_INT8_METHOD = "static-percentile"


@dataclass
class ExportConfig:
    # what to export
    onnx: bool = False  # the export format; ONNX is the only one, the flag keeps the CLI explicit
    model: str = "runs/deniro"  # save_pretrained folder (python -m train's default output) or hub id
    tokenizer: str | None = None  # folder or hub id; default: --model's tokenizer
    output: str | None = None  # the artifact folder to write
    overwrite: bool = False  # replace a non-empty --output
    # graphs
    precision: tuple[str, ...] = ()  # fast graphs to write; empty: the --device default
    device: str = "cpu"  # cpu | cuda: execution provider used to validate (and fp16 needs cuda)
    full_graph: bool = True  # also write model.onnx (Optimum layout, logits for every position)
    fuse: bool = True  # ONNX Runtime transformer fusions; refuse to export if attention is not fused
    attn_implementation: str = "auto"  # how transformers builds attention before tracing (see model.py)
    opset: int = 17
    per_channel: bool = True  # int8: one scale per output channel of each weight
    int8_method: str = DEFAULT_INT8_METHOD  # how the int8 graph is built (INT8_METHODS)
    weights: str = "fp32"  # fp32 | int8: weight matrices rounded to int8 and stored so (export/weights.py)
    table_8bit_rows: int | None = None  # --weights int8: only the N most frequent pieces' table rows 8-bit, the rest 4
    calibration_sentences: int = 256  # static int8: IMDB sentences (train split) that fix the activation scales
    # validation
    validate: bool = True  # compare every graph against PyTorch; write nothing if a threshold fails
    dataset: str = "stanfordnlp/imdb"  # hub id or folder of <split>.parquet; random ids if the hub is unreachable
    split: str = "test"
    text_column: str = "text"
    sentences: int = 256  # masked IMDB sentences (one masked word each)
    random_sequences: int = 64  # random-id sequences with 1-3 masks each
    perplexity_chunks: int = 32  # premasked chunks scored for perplexity
    chunk_size: int = 128
    batch_size: int = 16
    seed: int = 0

    def precisions(self) -> tuple[str, ...]:
        """The precisions to write, fp32 always first (it is the reference graph)."""
        chosen = self.precision or DEFAULT_PRECISIONS.get(self.device, ("fp32",))
        return tuple(dict.fromkeys(("fp32", *chosen)))

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def split_precisions(values: list[str] | None) -> tuple[str, ...]:
    """`--precision fp32 --precision int8` and `--precision fp32,int8` both give ('fp32', 'int8')."""
    parts = [p.strip().lower() for v in values or [] for p in v.split(",")]
    return tuple(dict.fromkeys(p for p in parts if p))


def check_config(config: ExportConfig) -> Path:
    """Everything that can be refused before loading a model; returns the output folder."""
    if not config.onnx:
        raise DeniroError("nothing to export: pass --onnx (ONNX is the only export format)")
    if not config.output:
        raise DeniroError("pass --output DIR: the artifact folder to write")
    if config.device not in DEVICES:
        raise DeniroError(f"--device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    unknown = [p for p in config.precisions() if p not in FAST_GRAPHS]
    if unknown:
        raise DeniroError(f"unknown --precision {', '.join(unknown)}; choose from {', '.join(FAST_GRAPHS)}")
    if "fp16" in config.precisions() and config.device != "cuda":
        raise DeniroError(
            "--precision fp16 needs --device cuda (onnxruntime runs fp16 graphs on CUDA "
            "only); on CPU use --precision fp32,int8"
        )
    if config.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise DeniroError(f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    check_numbers(config)
    check_not_an_artifact(config.model)
    check_dataset(config.dataset)
    if config.int8_method not in INT8_METHODS:
        raise DeniroError(f"--int8-method must be one of {', '.join(INT8_METHODS)}, got {config.int8_method!r}")
    if config.weights not in WEIGHT_STORAGE:
        raise DeniroError(f"--weights must be one of {', '.join(WEIGHT_STORAGE)}, got {config.weights!r}")
    if config.table_8bit_rows is not None and (config.weights != "int8" or config.table_8bit_rows < 0):
        raise DeniroError(
            f"--table-8bit-rows {config.table_8bit_rows}: pass a number of rows >= 0 together with --weights int8 "
            f"(the rest of the word-embedding table is stored at 4 bits)"
        )
    if config.weights == "int8" and "fp16" in config.precisions():
        raise DeniroError("--weights int8 stores fp32 graphs compactly for CPU apps; export fp16 without it")
    return check_output(config)


def check_not_an_artifact(model: str) -> None:
    """An export folder passed as --model (deniro.json and config.json, no PyTorch weights): transformers said
    only "no file named pytorch_model.bin, model.safetensors ...", after the model loading began."""
    manifest = Path(model).expanduser() / MANIFEST
    if not manifest.is_file():
        return
    try:
        source = json.loads(manifest.read_text())["source"]["model"]
    except (OSError, ValueError, KeyError, TypeError):  # a damaged manifest: the message goes without its source
        source = None
    origin = f"; exported from {source}" if source else ""
    raise DeniroError(
        f"--model {model} is already an exported deniro_rt artifact (it has {MANIFEST}{origin}), not a model to "
        "export; pass the trained model it came from: a save_pretrained folder such as a python -m train --output "
        "run folder, or a hub id"
    )


def check_numbers(config: ExportConfig) -> None:
    if min(config.sentences, config.random_sequences, config.perplexity_chunks) < 0:
        raise DeniroError("--sentences, --random-sequences and --perplexity-chunks must not be negative")
    check_least(config, dict(batch_size=1, chunk_size=2, calibration_sentences=16))
    if config.opset not in OPSETS:
        raise DeniroError(f"--opset must be from {OPSETS[0]} to {OPSETS[-1]} (default 17), got {config.opset}")


def check_dataset(dataset: str) -> None:
    """A --dataset named as a local folder must be one. Random ids stand in for an unreachable hub id (offline)
    only: a mistyped folder validated on random ids, with one warning, and the export passed."""
    if looks_like_path(dataset) and not Path(dataset).expanduser().is_dir():
        raise DeniroError(
            f"--dataset {dataset}: no such folder; pass a folder of <split>.parquet files (e.g. ../shared/data/imdb)"
        )


def check_output(config: ExportConfig) -> Path:
    """The shared check (one message for every CLI): runs before anything is written. --dataset too: with
    --overwrite an export into the folder of its reviews deleted the reviews it validated on."""
    sources = {"--model": config.model, "--tokenizer": config.tokenizer, "--dataset": config.dataset}
    return check_output_folder(config.output, sources, config.overwrite)


def resolve_providers(device: str) -> list[str]:
    """The onnxruntime execution providers for --device, resolved once (deniro_rt.providers: the runtime's
    own resolution, the same error when CUDA is missing)."""
    return session_providers(device)
