"""The sentence workload: IMDB test sentences, one whole word masked each, bucketed by token length.

Built once per run from the artifact's tokenizer, so every engine sees exactly the same texts.
A bucket of length L holds texts of 3/4 L .. L tokens ([CLS] and [SEP] included): a run of
consecutive sentences of one review (`<br />` removed), with one alphabetic word replaced by the
mask token (seeded). At most one text per review and bucket, reviews taken in a seeded order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deniro_rt.data import mask_one_word, review_sentences
from deniro_rt.errors import DeniroError

log = logging.getLogger(__name__)
PROMPT = "prompt"  # the length label of the model card's prompt
SPECIALS = 2  # [CLS] and [SEP]


@dataclass
class Workload:
    buckets: dict[int, list[str]]  # target length -> masked texts
    prompt: str  # the model card's prompt, with this tokenizer's mask token
    seed: int
    words: dict[int, list[str]] = field(default_factory=dict)  # the masked-out word of each text
    tokens: dict[int, list[int]] = field(default_factory=dict)  # token count of each text (with specials)

    def texts(self, length: int | str) -> list[str]:
        return [self.prompt] if length == PROMPT else self.buckets[length]

    def sample(self, n: int) -> list[str]:
        """Up to n texts spread evenly over the buckets, plus the prompt (the parity set)."""
        per = max(1, n // max(1, len(self.buckets)))
        return [self.prompt] + [t for texts in self.buckets.values() for t in texts[:per]]

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "prompt": self.prompt,
            "buckets": {str(k): len(v) for k, v in self.buckets.items()},
            "mean_tokens": {str(k): float(np.mean(v)) for k, v in self.tokens.items() if v},
        }


def load_tokenizer(artifact: Path):
    """The artifact's tokenizer.json as a `tokenizers.Tokenizer`, truncation and padding off."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def bucket_lengths(lengths: list[int], max_positions: int) -> list[int]:
    kept = [n for n in lengths if n <= max_positions]
    for n in sorted(set(lengths) - set(kept)):
        log.warning("length %d skipped: the model takes at most %d positions", n, max_positions)
    if not kept:
        raise DeniroError(f"no --lengths fit the model's {max_positions} positions; pass smaller ones")
    return sorted(set(kept))


def build_workload(
    reviews: list[str], tokenizer, lengths: list[int], per_bucket: int, seed: int, mask_token: str, prompt: str
) -> Workload:
    """`per_bucket` texts per length (fewer when the reviews run out; a warning says so)."""
    rng = np.random.default_rng(seed)
    buckets: dict[int, list[str]] = {n: [] for n in lengths}
    words: dict[int, list[str]] = {n: [] for n in lengths}
    tokens: dict[int, list[int]] = {n: [] for n in lengths}
    order = rng.permutation(len(reviews))
    bar = tqdm(total=per_bucket * len(lengths), desc="workload", leave=False, dynamic_ncols=True)
    for start in range(0, len(order), 256):
        if all(len(b) >= per_bucket for b in buckets.values()):
            break
        batch = [reviews[i] for i in order[start : start + 256]]
        for sentences, counts in _tokenized(batch, tokenizer):
            _fill_buckets(sentences, counts, (buckets, words, tokens), per_bucket, tokenizer, rng, mask_token)
        bar.update(sum(len(b) for b in buckets.values()) - bar.n)
    bar.close()
    for n, texts in buckets.items():
        if len(texts) < per_bucket:
            log.warning(
                "length %d: only %d texts (asked for %d); throughput cycles through them", n, len(texts), per_bucket
            )
        if not texts:
            raise DeniroError(f"no text of about {n} tokens in the dataset; drop {n} from --lengths")
    return Workload(buckets, prompt.replace("[MASK]", mask_token), seed, words, tokens)


def _tokenized(reviews: list[str], tokenizer) -> list[tuple[list[str], np.ndarray]]:
    """Per review: its sentences and their token counts (without specials)."""
    sentences = [review_sentences(r) for r in reviews]
    flat = [s for group in sentences for s in group]
    counts = np.array([len(e.ids) for e in tokenizer.encode_batch(flat, add_special_tokens=False)])
    out, at = [], 0
    for group in sentences:
        out.append((group, counts[at : at + len(group)]))
        at += len(group)
    return out


def _fill_buckets(sentences, counts, into, per_bucket, tokenizer, rng, mask_token) -> None:
    """Add at most one text of this review to each bucket that still needs some."""
    buckets, words, tokens = into
    for n, texts in buckets.items():
        if len(texts) >= per_bucket:
            continue
        span = _window(counts, n, rng)
        if span is None:
            continue
        masked = mask_one_word(" ".join(sentences[span[0] : span[1]]), rng, mask_token)
        if masked is None:
            continue
        size = len(tokenizer.encode(masked[0]).ids)
        if 3 * n // 4 <= size <= n and masked[0].count(mask_token) == 1:
            texts.append(masked[0])
            words[n].append(masked[1])
            tokens[n].append(size)


def _window(counts: np.ndarray, n: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """A run [i, j) of consecutive sentences of 3/4 n .. n tokens with specials, from a random start."""
    if len(counts) == 0:
        return None
    first = int(rng.integers(len(counts)))
    for i in list(range(first, len(counts))) + list(range(first)):
        total = SPECIALS
        for j in range(i, len(counts)):
            total += int(counts[j])
            if total > n:
                break
            if total >= 3 * n // 4:
                return i, j + 1
    return None


def call_padding(lengths: np.ndarray, batch: int, n_texts: int, token_budget: int = 0) -> float:
    """Padding share of the graph runs that `n_texts` texts (these token counts, cycled) make when passed
    `batch` at a time, each call sorted and split as FillMask.batches does (`batch` rows, `token_budget`
    padded tokens a run). Per call, not over the whole list: a call only sorts its own texts, so sorting every
    text at once reports the padding of batches no call ran (0.012 for calls that pad 0.06, say)."""
    from deniro_rt.runtime import padded_tokens

    cycled = np.resize(np.asarray(lengths, dtype=np.int64), n_texts)  # [n_texts] as the calls get them
    calls = [cycled[start : start + batch] for start in range(0, n_texts, batch)]  # each call's [<= batch]
    padded = sum(padded_tokens(call, batch, token_budget) for call in calls)
    return float(1 - cycled.sum() / max(1, padded))
