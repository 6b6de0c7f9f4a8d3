"""Prune the vocabulary of a DistilBertForMaskedLM folder to the N pieces IMDB uses most (issue 12).

The 30522 x 384 word-embedding table (which the tied projector reads again) is half of a MiniLM-sized model;
IMDB uses a fraction of bert-base-uncased's pieces. This writes a new, complete save_pretrained folder
(model + tokenizer) that export and the runtime use unchanged:

- kept: every special token; every single-character piece (`x` and `##x`) whose character occurs in the
  counted reviews, so a word whose whole-word piece was pruned falls back to smaller pieces, not [UNK];
  then the pieces most frequent on --count-texts train reviews (train.shrink.piece_order) up to --keep.
- new ids keep the original order (kept ids sorted ascending), so [PAD] (id 0) stays 0; others move.
- tokenizer: the original tokenizer.json with the WordPiece vocabulary and the special-token ids
  replaced; normalizer, pre-tokenizer, post-processor, truncation and padding stay as they were, so a
  word whose pieces are all kept gets exactly its old pieces (new ids = old ids mapped).
- model: word-embedding rows and projector bias at the kept ids; everything else copied; projector tied.

Both are checked before anything is published; prune.json in the folder records the config and stats.

    python -m train.prune --model runs/minilm-gpu --dataset ../shared/data/imdb --keep 20000 --output runs/minilm-20k
    python -m export --onnx --model runs/minilm-20k --output exports/minilm-20k --dataset ../shared/data/imdb
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deniro_rt.data import load_text_splits, untruncated
from deniro_rt.errors import DeniroError
from deniro_rt.files import check_output_folder, staged

from .shrink import piece_order

log = logging.getLogger("train.prune")

# tensors with one row (or entry) per vocabulary piece
VOCAB_TENSORS = ("distilbert.embeddings.word_embeddings.weight", "vocab_projector.weight", "vocab_projector.bias")
# init_kwargs of the original tokenizer that describe its old files or old ids, not its settings
TOKENIZER_FILE_KWARGS = (
    "name_or_path",
    "vocab_file",
    "tokenizer_file",
    "added_tokens_decoder",
    "tokenizer_object",
    "special_tokens_map_file",
)
MODEL_CHECK_TEXTS = 4  # reviews the pruned model's logits are compared on before publishing
MODEL_CHECK_TOKENS = 64
LOGITS_TOLERANCE = 1e-4


@dataclass
class PruneConfig:
    model: str  # DistilBertForMaskedLM save_pretrained folder (config, weights, fast WordPiece tokenizer)
    dataset: str  # folder of <split>.parquet files (train: piece counts)
    output: str  # folder the pruned model + tokenizer are written to
    keep: int = 20000  # vocabulary size after pruning
    count_texts: int = 5000  # train reviews the piece frequencies are counted on
    seed: int = 1234  # seed of the review sample (train.shrink's default: the same reviews)
    overwrite: bool = False  # replace a non-empty --output


HELP = {
    "model": "DistilBertForMaskedLM save_pretrained folder (config, weights, fast WordPiece tokenizer)",
    "dataset": "folder of <split>.parquet files (the train split's reviews are counted)",
    "output": "folder for the pruned model and tokenizer (written atomically)",
    "keep": "vocabulary size after pruning (specials and IMDB's single characters always kept)",
    "count_texts": "train reviews the piece frequencies are counted on",
    "seed": "seed of the review sample",
    "overwrite": "replace a non-empty --output",
}


# --------------------------------------------------------------------------- inputs
def load_source(model_dir: Path):
    """The DistilBertForMaskedLM (eval) and its fast tokenizer; one-line errors for anything else."""
    from transformers import AutoConfig, DistilBertForMaskedLM

    from .convert import quiet_transformers
    from .model import read_pretrained
    from .tokenizer import load_tokenizer

    if not (model_dir / "config.json").is_file():
        raise DeniroError(
            f"--model {model_dir}: no config.json; pass a DistilBertForMaskedLM save_pretrained "
            f"folder (e.g. runs/minilm-gpu)"
        )
    fix = "pass a DistilBertForMaskedLM save_pretrained folder (e.g. runs/minilm-gpu)"
    model_type = read_pretrained("--model", model_dir, lambda: AutoConfig.from_pretrained(model_dir), fix).model_type
    if model_type != "distilbert":
        raise DeniroError(
            f"--model {model_dir} is a {model_type!r} model, not DistilBERT; convert a BERT first "
            f"with python -m train.convert"
        )
    with quiet_transformers():  # a missing head is reported below, in one line
        model, info = read_pretrained(
            "--model",
            model_dir,
            lambda: DistilBertForMaskedLM.from_pretrained(model_dir, output_loading_info=True),
            fix,
        )
    missing = set(info["missing_keys"]) - {"vocab_projector.weight"}  # tied: stored once
    if missing:
        raise DeniroError(
            f"--model {model_dir} has no masked-LM head (missing {sorted(missing)[:3]}); pass a "
            f"DistilBertForMaskedLM folder"
        )
    tokenizer = load_tokenizer(str(model_dir), hint="the model folder needs its tokenizer files (tokenizer.json)")
    if len(tokenizer) > model.config.vocab_size:
        raise DeniroError(
            f"--model {model_dir}: the tokenizer has {len(tokenizer)} pieces but the model only "
            f"{model.config.vocab_size} embedding rows; pass the folder the model was trained with"
        )
    return model.eval(), tokenizer


def sample_train_texts(dataset: str, count: int, seed: int) -> list[str]:
    """`count` train reviews drawn as train.shrink draws them (same seed: same reviews)."""
    texts = load_text_splits(dataset, ["train"])["train"]
    if not texts:
        raise DeniroError(f"--dataset {dataset}: the train split is empty; pass a dataset with train reviews")
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), min(count, len(texts)), replace=False)]


# --------------------------------------------------------------------------- which pieces
def forced_piece_ids(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(special ids, single-character piece ids): the ids kept whatever --keep says. A single character
    is kept (as `x` and `##x`, where the vocabulary has them) when it occurs in the normalized texts."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "WordPiece":
        raise DeniroError(
            f"the tokenizer is {spec['model']['type']}, not WordPiece; only BERT-style WordPiece "
            f"vocabularies can be pruned"
        )
    vocab, prefix = spec["model"]["vocab"], spec["model"]["continuing_subword_prefix"]
    added = [token["id"] for token in spec["added_tokens"]]
    specials = np.unique(np.asarray(tokenizer.all_special_ids + added, dtype=np.int64))
    normalizer = tokenizer.backend_tokenizer.normalizer
    chars = set()
    for text in texts:
        chars.update(normalizer.normalize_str(text) if normalizer else text)
    singles = {vocab[piece] for char in chars for piece in (char, prefix + char) if piece in vocab}
    return specials, np.setdiff1d(np.asarray(sorted(singles), dtype=np.int64), specials)


def check_keep(keep: int, vocab_size: int, forced: int | None = None) -> None:
    """--keep must prune something and leave room for the `forced` pieces (checked once they are known)."""
    if keep >= vocab_size:
        raise DeniroError(
            f"--keep {keep} is not smaller than the vocabulary ({vocab_size} pieces): nothing to "
            f"prune; pass a smaller --keep (e.g. {20000 if vocab_size > 20000 else vocab_size * 2 // 3})"
        )
    if forced is not None and keep < forced:
        raise DeniroError(
            f"--keep {keep} is smaller than the {forced} pieces that are always kept (special "
            f"tokens and the single characters of the counted reviews); pass --keep {forced} or more"
        )


def choose_kept(order: np.ndarray, forced: np.ndarray, keep: int, vocab_size: int) -> np.ndarray:
    """The kept original ids, ascending: the forced ones, then the most frequent others up to `keep`."""
    check_keep(keep, vocab_size, len(forced))
    others = order[~np.isin(order, forced)]  # most frequent first
    return np.sort(np.concatenate([forced, others[: keep - len(forced)]]))  # [keep]


# --------------------------------------------------------------------------- the pruned tokenizer
def remap_post_processor(node: dict, vocab: dict[str, int]) -> None:
    """Point the post-processor's special tokens ([CLS], [SEP]) at their new ids, in place."""
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for special in node["special_tokens"].values():
            special["ids"] = [vocab[token] for token in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for part in ("sep", "cls"):
            node[part] = [node[part][0], vocab[node[part][0]]]
    elif kind == "Sequence":
        for processor in node["processors"]:
            remap_post_processor(processor, vocab)


def pruned_backend(tokenizer, kept: np.ndarray):
    """The original `tokenizers.Tokenizer` with only the kept pieces, numbered in their original order."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    piece_of = {old_id: piece for piece, old_id in spec["model"]["vocab"].items()}
    missing = [token["content"] for token in spec["added_tokens"] if token["id"] not in piece_of]
    if missing:
        raise DeniroError(
            f"added tokens {missing[:3]} are not in the WordPiece vocabulary; this tokenizer "
            f"cannot be pruned (a BERT-style tokenizer.json has them in model.vocab)"
        )
    vocab = {piece_of[int(old_id)]: new_id for new_id, old_id in enumerate(kept)}
    spec["model"]["vocab"] = vocab
    for token in spec["added_tokens"]:
        token["id"] = vocab[token["content"]]  # special: always kept
    if spec.get("post_processor"):
        remap_post_processor(spec["post_processor"], vocab)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = vocab[spec["padding"]["pad_token"]]
    return Tokenizer.from_str(json.dumps(spec))


def pruned_tokenizer(tokenizer, kept: np.ndarray):
    """The same transformers class and settings (lower-casing, model_max_length, special tokens, ...) around
    the pruned backend; a BertTokenizerFast also writes vocab.txt on save."""
    settings = {k: v for k, v in tokenizer.init_kwargs.items() if k not in TOKENIZER_FILE_KWARGS}
    return type(tokenizer)(tokenizer_object=pruned_backend(tokenizer, kept), **settings)


# --------------------------------------------------------------------------- the pruned model
def pruned_model(model, kept: np.ndarray, pad_token_id: int):
    """A DistilBertForMaskedLM with `len(kept)` pieces: the kept rows of every per-piece tensor, all other
    weights copied, the projector tied to the word embeddings again (when the original's was)."""
    import torch
    from transformers import DistilBertForMaskedLM

    config = copy.deepcopy(model.config)
    config.vocab_size, config.pad_token_id = len(kept), pad_token_id
    index = torch.from_numpy(kept)  # [keep]
    state = model.state_dict()
    for name in VOCAB_TENSORS:
        state[name] = state[name][index].clone()  # [keep, dim] (bias: [keep])
    torch.manual_seed(0)  # every weight is overwritten below; only keeps the throw-away init reproducible
    pruned = DistilBertForMaskedLM(config)
    pruned.load_state_dict(state, strict=True)
    pruned.tie_weights()
    tied = pruned.vocab_projector.weight is pruned.distilbert.embeddings.word_embeddings.weight
    if config.tie_word_embeddings and not tied:
        raise RuntimeError("the pruned model's projector is not tied to its word embeddings")
    return pruned.eval()


# --------------------------------------------------------------------------- checks and stats
def tokenizer_stats(old, new, kept: np.ndarray, texts: list[str]) -> dict:
    """Compare the two tokenizations of `texts` (whole reviews: truncation off): a review whose old pieces are
    all kept must get exactly the mapped ids; the rest is statistics for prune.json."""
    new_id = np.full(len(old), -1, dtype=np.int64)  # [old_vocab], -1: pruned
    new_id[kept] = np.arange(len(kept))
    old_specials, new_specials = np.asarray(old.all_special_ids), np.asarray(new.all_special_ids)
    counts = {"old_tokens": 0, "covered": 0, "new_tokens": 0, "old_unk": 0, "new_unk": 0, "texts_all_kept": 0}
    encodings = (untruncated(t.backend_tokenizer).encode_batch(texts) for t in (old, new))
    for before, after in zip(*encodings):
        old_ids, new_ids = np.asarray(before.ids), np.asarray(after.ids)  # [tokens_old], [tokens_new]
        mapped = new_id[old_ids]
        if (mapped >= 0).all():
            counts["texts_all_kept"] += 1
            if not np.array_equal(mapped, new_ids):
                raise RuntimeError(f"pruned tokenizer disagrees on a review whose pieces are all kept: {before.tokens}")
        words = ~np.isin(old_ids, old_specials)  # specials are always kept: they would inflate coverage
        counts["old_tokens"] += int(words.sum())
        counts["covered"] += int((mapped[words] >= 0).sum())
        counts["new_tokens"] += int((~np.isin(new_ids, new_specials)).sum())
        counts["old_unk"] += int((old_ids == old.unk_token_id).sum())
        counts["new_unk"] += int((new_ids == new.unk_token_id).sum())
    return {
        "counted_tokens": counts["old_tokens"],
        "covered_fraction": round(counts["covered"] / max(counts["old_tokens"], 1), 6),
        "tokens_per_review_ratio": round(counts["new_tokens"] / max(counts["old_tokens"], 1), 6),
        "unk_fraction_before": round(counts["old_unk"] / max(counts["old_tokens"], 1), 6),
        "unk_fraction_after": round(counts["new_unk"] / max(counts["new_tokens"], 1), 6),
        "reviews_all_kept_identical_ids": counts["texts_all_kept"],
    }


def check_logits(old_model, new_model, new_tokenizer, kept: np.ndarray, texts: list[str]) -> float:
    """Max |logit difference| between the pruned model and the original at the kept ids. Exact for any
    input: new id i is old id kept[i], so the original is fed kept[new_ids]."""
    import torch  # here, not with the module: under run_main, so Ctrl-C while it loads is one line

    batch = new_tokenizer(
        texts[:MODEL_CHECK_TEXTS],
        truncation=True,
        max_length=MODEL_CHECK_TOKENS,
        padding="max_length",
        return_tensors="pt",
    )
    new_ids, mask = batch["input_ids"], batch["attention_mask"]  # [batch, seq]
    old_ids = torch.from_numpy(kept)[new_ids]  # [batch, seq]
    with torch.no_grad():
        expected = old_model(input_ids=old_ids, attention_mask=mask).logits[..., torch.from_numpy(kept)]  # [b, s, keep]
        got = new_model(input_ids=new_ids, attention_mask=mask).logits  # [batch, seq, keep]
    difference = float((got - expected).abs().max())
    if difference > LOGITS_TOLERANCE:
        raise RuntimeError(f"pruned model's logits differ from the original's by {difference:.2e}")
    return difference


# --------------------------------------------------------------------------- stage
def prune(config: PruneConfig, stage: Path) -> dict:
    """Write the pruned model, tokenizer and prune.json into `stage`; returns prune.json's content."""
    from transformers import AutoTokenizer

    started = time.perf_counter()
    model, tokenizer = load_source(Path(config.model))
    check_keep(config.keep, len(tokenizer))  # before the counting, the slow part
    texts = sample_train_texts(config.dataset, config.count_texts, config.seed)
    specials, singles = forced_piece_ids(tokenizer, texts)
    check_keep(config.keep, len(tokenizer), len(specials) + len(singles))
    order = piece_order(tokenizer, texts)  # [vocab] ids, most frequent first
    kept = choose_kept(order, np.union1d(specials, singles), config.keep, len(tokenizer))  # [keep]
    log.info(
        "keeping %d of %d pieces (%d special, %d single characters forced)",
        len(kept),
        len(tokenizer),
        len(specials),
        len(singles),
    )
    new_tokenizer = pruned_tokenizer(tokenizer, kept)
    new_model = pruned_model(model, kept, new_tokenizer.pad_token_id)
    new_model.save_pretrained(stage, safe_serialization=True)
    new_tokenizer.save_pretrained(str(stage))
    saved = AutoTokenizer.from_pretrained(str(stage))  # checked: what export will load
    stats = {
        "source_model": str(Path(config.model).resolve()),
        "original_vocab_size": len(tokenizer),
        "kept": len(kept),
        "forced_special": len(specials),
        "forced_single_char": len(singles),
        "counted_reviews": len(texts),
        **tokenizer_stats(tokenizer, saved, kept, texts),
        "max_logit_difference": check_logits(model, new_model, saved, kept, texts),
        "seconds": round(time.perf_counter() - started, 1),
    }
    record = {"config": asdict(config), "stats": stats}
    (stage / "prune.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s", stats)
    return record


def main(config: PruneConfig) -> Path:
    out = check_output_folder(config.output, {"--model": config.model, "--dataset": config.dataset}, config.overwrite)
    if config.count_texts < 1:
        raise DeniroError(
            f"--count-texts must be at least 1 (the default counts 5000 reviews), got {config.count_texts}"
        )
    with staged(out) as stage:  # published whole when prune returns; a failed run leaves nothing
        prune(config, stage)
    log.info("wrote %s", out)
    return out


def run(argv: list[str] | None = None) -> int:
    from deniro_rt.cli import config_parser, run_main, setup_logging

    required = ("model", "dataset", "output")
    parser = config_parser(
        PruneConfig(model="", dataset="", output=""), "python -m train.prune", __doc__, HELP, None, None, required
    )
    setup_logging(ours=("train",))
    config = PruneConfig(**vars(parser.parse_args(argv)))
    return run_main(lambda: main(config), interrupted=f"interrupted: nothing written to {config.output}")


if __name__ == "__main__":
    sys.exit(run())
