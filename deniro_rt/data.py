"""Torch-free data code shared by train/, export/, bench/ and the runtime.

tokenize -> concatenate -> chunk, whole-word masking, the fixed "mask once" evaluation set,
token-weighted perplexity, and the IMDB sentence workload. numpy and `tokenizers` only, so the
runtime can score perplexity exactly as training does without importing torch.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeniroError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that are not scored (PyTorch's CrossEntropyLoss default)
NO_WORD = -1  # word id of special tokens ([CLS], [SEP], [PAD])
IMDB_HUB_ID = "stanfordnlp/imdb"
BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


@dataclass(frozen=True)
class Chunks:
    """Fixed-length training/eval examples cut from one concatenated token stream."""

    input_ids: np.ndarray  # [n_chunks, chunk_size] int32
    word_ids: np.ndarray  # [n_chunks, chunk_size] int64, NO_WORD for special tokens, unique per word

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class MaskedBatch:
    input_ids: np.ndarray  # [batch, seq] int64, with [MASK] / random / kept tokens at the masked words
    labels: np.ndarray  # [batch, seq] int64, original id where scored, IGNORE_INDEX elsewhere


# --------------------------------------------------------------------------- tokenize and chunk
def encode_stream(tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize texts ([CLS] text [SEP] each) and concatenate them into one stream.

    `tokenizer` is a `tokenizers.Tokenizer` (a transformers fast tokenizer's `.backend_tokenizer`).
    Returns (ids [n_tokens] int32, word_ids [n_tokens] int64) where word ids are made unique across
    documents, so that two neighbouring words of different reviews are never merged.
    """
    backend = untruncated(tokenizer)
    encodings = backend.encode_batch(list(texts))
    ids_parts, word_parts, next_word = [], [], 0
    for enc in encodings:
        words = np.array([NO_WORD if w is None else w for w in enc.word_ids], dtype=np.int64)
        is_word = words != NO_WORD
        words[is_word] += next_word
        if is_word.any():
            next_word = int(words[is_word].max()) + 1
        ids_parts.append(np.asarray(enc.ids, dtype=np.int32))
        word_parts.append(words)
    if not ids_parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(ids_parts), np.concatenate(word_parts)


def untruncated(tokenizer):
    """A copy of the backend tokenizer with truncation and padding off: whole texts, for streams that are
    chunked later and for counts (a saved tokenizer.json may truncate at 128 and pad)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def chunk_stream(ids: np.ndarray, word_ids: np.ndarray, chunk_size: int) -> Chunks:
    """Cut the stream into chunks of `chunk_size`, dropping the incomplete tail (as the recipe does)."""
    if chunk_size < 2:
        raise DeniroError(f"chunk size must be at least 2, got {chunk_size}")
    n_chunks = len(ids) // chunk_size
    usable = n_chunks * chunk_size
    return Chunks(
        input_ids=ids[:usable].reshape(n_chunks, chunk_size),
        word_ids=word_ids[:usable].reshape(n_chunks, chunk_size),
    )


def chunk_texts(tokenizer, texts: Sequence[str], chunk_size: int) -> Chunks:
    ids, word_ids = encode_stream(tokenizer, texts)
    return chunk_stream(ids, word_ids, chunk_size)


# --------------------------------------------------------------------------- whole-word masking
def whole_word_mask(
    input_ids: np.ndarray,
    word_ids: np.ndarray,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
) -> MaskedBatch:
    """Choose whole words with probability `mlm_probability`; all their pieces are scored.

    Of the chosen tokens, 80 % become [MASK], 10 % a random token and 10 % stay (BERT's recipe,
    applied per token as transformers' DataCollatorForWholeWordMask does). Special tokens
    (word id NO_WORD) are never chosen.
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)  # [batch, seq]
    word_ids = np.asarray(word_ids)  # [batch, seq]
    selected = _select_words(word_ids, rng, mlm_probability)  # [batch, seq] bool
    labels = np.where(selected, input_ids, IGNORE_INDEX)
    roll = rng.random(input_ids.shape)
    to_mask = selected & (roll < 0.8)
    to_random = selected & (roll >= 0.8) & (roll < 0.9)
    random_ids = rng.integers(0, vocab_size, size=input_ids.shape)
    masked = np.where(to_mask, mask_token_id, np.where(to_random, random_ids, input_ids))
    return MaskedBatch(input_ids=masked, labels=labels)


def _select_words(word_ids: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """Bernoulli draw per word (a run of equal word ids in a row); returns a token mask."""
    is_word = word_ids != NO_WORD
    starts = is_word.copy()
    starts[:, 1:] &= word_ids[:, 1:] != word_ids[:, :-1]  # a new word starts where the id changes
    group = np.cumsum(starts.ravel()).reshape(word_ids.shape) - 1  # word index of every token
    chosen_words = rng.random(int(starts.sum())) < probability
    return is_word & chosen_words[np.maximum(group, 0)]


def premask(
    chunks: Chunks, seed: int, mask_token_id: int, vocab_size: int, mlm_probability: float = 0.15
) -> MaskedBatch:
    """Mask an evaluation set ONCE with a fixed seed, so every epoch and backend sees the same labels."""
    rng = np.random.default_rng(seed)
    return whole_word_mask(chunks.input_ids, chunks.word_ids, rng, mask_token_id, vocab_size, mlm_probability)


# --------------------------------------------------------------------------- perplexity
def masked_nll(log_probs: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Sum of -log p(label) over scored rows. log_probs [n, vocab], labels [n] (IGNORE_INDEX skipped)."""
    labels = np.asarray(labels).ravel()
    keep = labels != IGNORE_INDEX
    picked = np.take_along_axis(log_probs[keep], labels[keep, None], axis=1)  # [n_kept, 1]
    return float(-picked.astype(np.float64).sum()), int(keep.sum())


def perplexity(total_nll: float, n_tokens: int) -> float:
    """Token-weighted perplexity: exp(sum of cross-entropy / number of scored tokens)."""
    if n_tokens <= 0:
        raise DeniroError("perplexity needs at least one masked token; the evaluation set is empty")
    return math.exp(total_nll / n_tokens)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- datasets
def load_text_splits(source: str, splits: Iterable[str], text_column: str = "text") -> dict[str, list[str]]:
    """Texts of each split, from a local folder of `<split>.parquet` files or a hub dataset id.

    A local folder is read with pyarrow (each split on its own); a hub id with the `datasets` library (the
    train/export/bench extras install it).
    """
    splits = list(splits)
    path = Path(source).expanduser()
    if path.exists():
        tables = _load_parquet_dir(path, splits)
    elif looks_like_path(source):
        raise DeniroError(
            f"dataset folder not found: {source} (pass --dataset with a folder of "
            f"<split>.parquet files, e.g. ../shared/data/imdb)"
        )
    else:
        tables = _load_hub(source, splits)
    for split in splits:
        if text_column not in tables[split].column_names:
            raise DeniroError(
                f"dataset {source!r} split {split!r} has no {text_column!r} column "
                f"(columns: {tables[split].column_names}); pass --text-column"
            )
    return {split: _texts(tables[split], source, split, text_column) for split in splits}


def _texts(table, source: str, split: str, text_column: str) -> list[str]:
    """The split's texts; a value that is not a string (a column of numbers, a null) is refused here, naming its
    rows: it failed deep inside the tokenizer ("'int' object is not iterable")."""
    texts = _column(table, text_column)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        rows = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DeniroError(
            f"dataset {source!r} split {split!r}: {len(bad)} of {len(texts)} values of column {text_column!r} are "
            f"not text (rows {rows}; first: {texts[bad[0]]!r}); pass --text-column with the column of texts, "
            "or drop those rows"
        )
    return texts


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _column(table, name: str) -> list[str]:
    """A column of a datasets.Dataset or a pyarrow.Table as a list."""
    return table.column(name).to_pylist() if hasattr(table, "to_batches") else list(table[name])


def _load_parquet_dir(path: Path, splits: list[str]):
    missing = [s for s in splits if not (path / f"{s}.parquet").is_file()]
    if missing:
        raise DeniroError(
            f"dataset folder {path} has no {', '.join(s + '.parquet' for s in missing)} "
            f"(it needs one parquet file per split: {', '.join(splits)})"
        )
    return {s: _read_parquet(path / f"{s}.parquet") for s in splits}


def _read_parquet(file: Path):
    """One split's file, read with pyarrow on its own. `datasets`' parquet builder (used here before) cast every
    split to the first one's columns (a test split with a column the train split lacks was a CastError), failed
    on a file of no rows, and buried a damaged file under its own DatasetGenerationError traceback."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DeniroError(f"reading {file} needs pyarrow: pip install 'deniro[train]' (or 'deniro[batch]')") from exc
    try:
        return pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise DeniroError(
            f"dataset file {file} is not readable as parquet ({exc}); replace it with the split's .parquet file"
        ) from exc


def _load_hub(dataset_id: str, splits: list[str]):
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DeniroError(
            f"loading {dataset_id!r} from the hub needs the 'datasets' package: "
            f"pip install 'deniro[train]', or pass a local folder of .parquet files"
        ) from exc
    try:
        return load_dataset(dataset_id, split=None)
    except Exception as exc:  # the hub is unreachable or the id is unknown
        raise DeniroError(
            f"could not load dataset {dataset_id!r} from the hub ({type(exc).__name__}); offline, pass a "
            f"local copy: --dataset ../shared/data/imdb (a folder with {', '.join(splits)} .parquet)"
        ) from exc


# --------------------------------------------------------------------------- sentence workload
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[A-Za-z]{3,}")


def review_sentences(review: str) -> list[str]:
    """Split one review into sentences, `<br />` tags removed."""
    text = BR_TAG.sub(" ", review)
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def mask_one_word(sentence: str, rng: np.random.Generator, mask_token: str = "[MASK]") -> tuple[str, str] | None:
    """Replace one alphabetic word (3+ letters) chosen by `rng` with the mask token.

    Returns (masked sentence, the word) or None when the sentence has no such word.
    """
    words = list(WORD.finditer(sentence))
    if not words:
        return None
    match = words[int(rng.integers(len(words)))]
    return sentence[: match.start()] + mask_token + sentence[match.end() :], match.group(0)
