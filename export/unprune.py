"""Unprune: the shipped 20,000-piece artifact back to a full-vocabulary (30,522-piece) DistilBertForMaskedLM.

The shipped model's unpruned fp32 weights are lost; its fused fp32 graph still holds every trained weight
(export.reference.model_from_graph). This rebuilds a MiniLM-shaped folder that `python -m train` and
`bench/gpu/carry.py init --from` take as a start point, so training goes on from the best model there is,
on the seed's 30,522-piece tokenization:

- every non-vocabulary tensor (embeddings' positions and LayerNorm, the 6 blocks, the head's transform and
  LayerNorm): the shipped model's;
- each of the shipped tokenizer's pieces: its word-embedding row and projector-bias entry copied to the
  MiniLM id of the same piece string (every piece must be found);
- the other pieces: MiniLM's pretrained word-embedding rows; their projector bias is the shipped bias's
  lowest value (--pruned-bias min, the default: they are the pieces IMDB uses least) or MiniLM's
  (--pruned-bias minilm: 0, the converted MiniLM has DistilBERT's fresh head, zero bias). On the repo's
  IMDB sample (DeNiro protocol, 200 chunks) min gives perplexity 17.26, minilm 17.86;
- the projector tied to the word embeddings; MiniLM's tokenizer (the seed's tokenization).

Checked before publishing: on IMDB text whose pieces are all shipped pieces, the logits at the shipped ids
equal the shipped model's; the folder loads with AutoModelForMaskedLM with no missing key. unprune.json
beside it records the config, the counts, the check and the sources' sha256.

    python -m export.unprune --output runs/shipped-full
    START=runs/shipped-full bash bench/gpu/prepare_carry.sh --ortgpu
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deniro_rt.artifact import TOKENIZER_FILE, sha256_file
from deniro_rt.data import load_text_splits
from deniro_rt.errors import DeniroError
from deniro_rt.files import check_output_folder, staged
from deniro_rt.models import DEFAULT_MODEL_DIR

log = logging.getLogger("export.unprune")

WORDS = "distilbert.embeddings.word_embeddings.weight"
BIAS = "vocab_projector.bias"
VOCAB_TENSORS = (WORDS, "vocab_projector.weight", BIAS)  # one row (entry) per piece
PRUNED_BIAS = ("min", "minilm")
LOGITS_TOLERANCE = 1e-4  # fp32, the same weights and ids mapped: ~1e-6 in practice
REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMDB_DIR = REPO / "tests" / "data" / "imdb-sample"


@dataclass
class UnpruneConfig:
    output: str  # folder the full-vocabulary DistilBertForMaskedLM + tokenizer are written to
    artifact: str = str(DEFAULT_MODEL_DIR)  # a pruned artifact (fast.onnx, config.json, tokenizer.json)
    minilm_cache: str = ""  # where MiniLM's DistilBERT conversion is cached ("" = a temp folder)
    pruned_bias: str = "min"  # projector bias of the pieces the artifact lacks: min (the shipped min) or minilm (0)
    dataset: str = str(SAMPLE_IMDB_DIR)  # <split>.parquet folder; its test reviews feed the logit check
    check_texts: int = 8  # reviews (all pieces shipped ones, 128 tokens) the logits are compared on
    overwrite: bool = False  # replace a non-empty --output


CHOICES = {"pruned_bias": PRUNED_BIAS}
HELP = {
    "output": "folder for the full-vocabulary model and MiniLM's tokenizer (written atomically)",
    "artifact": "the pruned artifact to unprune (default: the shipped model)",
    "minilm_cache": "folder MiniLM's DistilBERT conversion is cached in (default: a temp folder)",
    "pruned_bias": "projector bias of the pieces the artifact lacks: min (the shipped bias's lowest) or minilm (0)",
    "dataset": "folder of <split>.parquet; the test reviews feed the logit check (default: the repo's sample, "
    "tests/data/imdb-sample)",
    "check_texts": "reviews the logits are compared on",
    "overwrite": "replace a non-empty --output",
}


# --------------------------------------------------------------------------- inputs
def wordpiece_vocab(folder: Path) -> dict[str, int]:
    """piece -> id of the WordPiece model in `folder`/tokenizer.json."""
    spec = json.loads((Path(folder) / TOKENIZER_FILE).read_text())
    if spec["model"]["type"] != "WordPiece":
        raise DeniroError(f"{folder}/{TOKENIZER_FILE} is {spec['model']['type']}, not WordPiece")
    return spec["model"]["vocab"]


def piece_map(shipped: dict[str, int], full: dict[str, int]) -> np.ndarray:
    """[n_shipped]: the full-vocabulary id of each shipped id's piece string; every piece must be found."""
    missing = [piece for piece in shipped if piece not in full]
    if missing:
        raise DeniroError(
            f"{len(missing)} of the artifact's {len(shipped)} pieces are not in MiniLM's vocabulary "
            f"(e.g. {missing[:5]}); unprune needs a vocabulary pruned from MiniLM's"
        )
    ids = np.full(len(shipped), -1, dtype=np.int64)
    for piece, shipped_id in shipped.items():
        ids[shipped_id] = full[piece]
    if (ids < 0).any() or len(np.unique(ids)) != len(ids):
        raise DeniroError("the artifact's vocabulary ids are not 0..n-1 with distinct pieces")
    return ids


def load_models(config: UnpruneConfig):
    """(shipped model from its graph, MiniLM's DistilBERT folder, the MiniLM model), all eval."""
    from transformers import AutoModelForMaskedLM

    from train.convert import minilm_distilbert

    from .reference import model_from_graph

    artifact = Path(config.artifact)
    check_artifact(artifact)
    shipped = model_from_graph(artifact).eval()
    cache = Path(config.minilm_cache) if config.minilm_cache else Path(tempfile.gettempdir()) / "deniro-minilm"
    minilm_dir = minilm_distilbert(cache)
    return shipped, minilm_dir, AutoModelForMaskedLM.from_pretrained(minilm_dir).eval()


def check_artifact(artifact: Path) -> None:
    """The artifact's files unprune reads, checked against its deniro.json: a damaged graph or tokenizer was
    onnx's DecodeError or a JSONDecodeError traceback; now the runtime's message naming the file."""
    from deniro_rt.artifact import load_manifest, verify_sources

    if not (artifact / "fast.onnx").is_file():
        raise DeniroError(f"--artifact {artifact}: no fast.onnx; pass an exported artifact folder")
    verify_sources(load_manifest(artifact))


# --------------------------------------------------------------------------- the model
def unpruned_state(shipped: dict, minilm: dict, full_ids: np.ndarray, pruned_bias: str) -> dict:
    """The full-vocabulary state dict: shipped tensors, MiniLM's vocabulary rows with the shipped rows placed."""
    import torch  # here and below, not with the module: under run_main, so Ctrl-C while it loads is one line

    state = {}
    for name, value in shipped.items():
        if name in VOCAB_TENSORS:
            continue
        if value.shape != minilm[name].shape:
            raise DeniroError(f"{name}: the artifact has {tuple(value.shape)}, MiniLM {tuple(minilm[name].shape)}")
        state[name] = value.clone()
    index = torch.from_numpy(full_ids)
    words, bias = minilm[WORDS].clone(), minilm[BIAS].clone()  # [vocab, dim], [vocab]
    if pruned_bias == "min":
        bias.fill_(float(shipped[BIAS].min()))
    words[index], bias[index] = shipped[WORDS], shipped[BIAS]
    state[WORDS], state[BIAS], state["vocab_projector.weight"] = words, bias, words
    return state


def unpruned_model(shipped, minilm, full_ids: np.ndarray, pruned_bias: str):
    """A DistilBertForMaskedLM of MiniLM's vocabulary with the shipped weights, projector tied."""
    import torch
    from transformers import DistilBertForMaskedLM

    config = copy.deepcopy(shipped.config)
    config.vocab_size, config.pad_token_id = minilm.config.vocab_size, minilm.config.pad_token_id
    state = unpruned_state(shipped.state_dict(), minilm.state_dict(), full_ids, pruned_bias)
    torch.manual_seed(0)  # every weight is overwritten; keeps the throw-away init reproducible
    model = DistilBertForMaskedLM(config)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    if model.vocab_projector.weight is not model.distilbert.embeddings.word_embeddings.weight:
        raise RuntimeError("the unpruned model's projector is not tied to its word embeddings")
    return model.eval()


# --------------------------------------------------------------------------- the check
def covered_batch(tokenizer, texts: list[str], kept: np.ndarray, count: int, length: int = 128) -> dict:
    """`count` of `texts` whose full-vocabulary pieces (first `length`) are all in `kept`, as a padded batch."""
    chosen = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=length)["input_ids"]
        if np.isin(ids, kept).all():
            chosen.append(text)
        if len(chosen) == count:
            break
    if not chosen:
        raise DeniroError("no review is covered by the artifact's pieces; pass another --dataset")
    return tokenizer(chosen, truncation=True, max_length=length, padding=True, return_tensors="pt")


def logit_difference(shipped, full, batch, full_ids: np.ndarray) -> float:
    """Max |logit difference| at the real tokens between `full` (at the shipped ids' full ids) and `shipped`
    (fed the same text in its own ids)."""
    import torch

    to_shipped = torch.full((full.config.vocab_size,), -1, dtype=torch.long)
    to_shipped[torch.from_numpy(full_ids)] = torch.arange(len(full_ids))
    ids, mask = batch["input_ids"], batch["attention_mask"]  # [batch, seq]
    with torch.no_grad():
        expected = shipped(input_ids=to_shipped[ids], attention_mask=mask).logits  # [b, s, n_shipped]
        got = full(input_ids=ids, attention_mask=mask).logits[..., torch.from_numpy(full_ids)]  # [b, s, n_shipped]
    real = mask.bool()
    difference = float((got[real] - expected[real]).abs().max())
    if difference > LOGITS_TOLERANCE:
        raise RuntimeError(f"the unpruned model's logits differ from the shipped model's by {difference:.2e}")
    return difference


def check_loads(folder: Path) -> int:
    """The written folder loads with AutoModelForMaskedLM with no missing or unexpected key; its vocab size."""
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise RuntimeError(f"the written model does not load cleanly: {bad}")
    return model.config.vocab_size


def pruned_bias_value(model, full_ids: np.ndarray) -> float:
    """The projector bias of the pieces the artifact lacks (one value for all of them)."""
    import torch

    others = np.setdiff1d(np.arange(model.config.vocab_size), full_ids)  # [n_full - n_shipped]
    return float(model.vocab_projector.bias[torch.from_numpy(others)].unique().item())


# --------------------------------------------------------------------------- stage
def unprune(config: UnpruneConfig, stage: Path) -> dict:
    """Write the full-vocabulary model, MiniLM's tokenizer and unprune.json into `stage`; returns the record."""
    from train.convert import MINILM_PACKAGE, minilm_zip
    from train.tokenizer import load_tokenizer

    started = time.perf_counter()
    shipped, minilm_dir, minilm = load_models(config)
    full_ids = piece_map(wordpiece_vocab(Path(config.artifact)), wordpiece_vocab(minilm_dir))  # [n_shipped]
    tokenizer = load_tokenizer(str(minilm_dir), hint="MiniLM's converted folder lacks its tokenizer.json")
    model = unpruned_model(shipped, minilm, full_ids, config.pruned_bias)
    texts = load_text_splits(config.dataset, ["test"])["test"]
    batch = covered_batch(tokenizer, texts, full_ids, config.check_texts)
    difference = logit_difference(shipped, model, batch, full_ids)
    reviews = int(batch["input_ids"].shape[0])
    log.info("logits at the %d shipped ids: max |difference| %.2e on %d reviews", len(full_ids), difference, reviews)
    model.save_pretrained(stage, safe_serialization=True)
    tokenizer.save_pretrained(str(stage))
    artifact = Path(config.artifact)
    stats = {
        "vocab_size": check_loads(stage),
        "shipped_pieces": len(full_ids),
        "minilm_pieces_kept": int(model.config.vocab_size - len(full_ids)),
        "pruned_bias_value": pruned_bias_value(model, full_ids),
        "check_reviews": reviews,
        "check_tokens": int(batch["attention_mask"].sum()),
        "max_logit_difference": difference,
        "seconds": round(time.perf_counter() - started, 1),
    }
    sources = {
        "artifact_fast_onnx": sha256_file(artifact / "fast.onnx"),
        "artifact_tokenizer": sha256_file(artifact / TOKENIZER_FILE),
        f"{MINILM_PACKAGE}_model_zip": sha256_file(minilm_zip()),
    }
    record = {"config": asdict(config), "stats": stats, "sha256": sources}
    (stage / "unprune.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s", stats)
    return record


def main(config: UnpruneConfig) -> Path:
    sources = {"--artifact": config.artifact, "--dataset": config.dataset, "--minilm-cache": config.minilm_cache}
    out = check_output_folder(config.output, sources, config.overwrite)
    if config.pruned_bias not in PRUNED_BIAS:
        raise DeniroError(f"--pruned-bias must be one of {', '.join(PRUNED_BIAS)}, got {config.pruned_bias!r}")
    if config.check_texts < 1:
        raise DeniroError(f"--check-texts must be at least 1, got {config.check_texts}")
    if config.minilm_cache and Path(config.minilm_cache).is_file():  # was a FileExistsError from mkdir
        raise DeniroError(f"--minilm-cache {config.minilm_cache} is a file; pass a folder (or leave it out)")
    with staged(out) as stage:  # published whole when unprune returns; a failed run leaves nothing
        unprune(config, stage)
    log.info("wrote %s", out)
    return out


def parse_args(argv: list[str] | None = None) -> UnpruneConfig:
    from deniro_rt.cli import config_parser

    parser = config_parser(
        UnpruneConfig(output=""), "python -m export.unprune", __doc__, HELP, None, CHOICES, ("output",)
    )
    return UnpruneConfig(**vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    from deniro_rt.cli import run_main, setup_logging

    setup_logging(ours=("export", "train"))
    config = parse_args(argv)
    return run_main(lambda: main(config), interrupted=f"interrupted: nothing written to {config.output}")


if __name__ == "__main__":
    sys.exit(run())
