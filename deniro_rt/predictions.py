"""Predictions: fill-mask results as columns (NumPy arrays, one row per mask, in input order).

    preds = deniro_rt.fill_arrays(texts, top_k=5)   # no per-candidate Python objects
    preds.token_ids, preds.scores                    # [n_masks, k] each
    preds.token_strs()                               # [n_masks, k] strings, one vectorised lookup
    preds.to_arrow()                                 # pyarrow Table with list columns
    preds.to_dicts()                                 # exactly deniro_rt.fill(texts, top_k=5)

A mask that truncation cut away (fill gives it []) is a row with mask_position -1, token_ids -1 and
scores NaN; to_arrow gives it empty lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TokenRows:
    """Token ids of many texts as one flat array (what the hot path works on, no list per text)."""

    ids: np.ndarray  # [total] int64, every text's ids (with [CLS]/[SEP]; windowed if truncated)
    offsets: np.ndarray  # [n_texts + 1] int64: text t is ids[offsets[t]:offsets[t + 1]]
    lost: dict[int, list[int]] = field(default_factory=dict)  # text -> mask numbers truncation cut away

    @property
    def lengths(self) -> np.ndarray:  # [n_texts]
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, text: int) -> np.ndarray:
        return self.ids[self.offsets[text] : self.offsets[text + 1]]


@dataclass(frozen=True)
class Predictions:
    """Top-k predictions per mask; `source` (the runtime and the token rows) serves the string views."""

    text_index: np.ndarray  # [n] int64: the text each mask row belongs to
    mask_position: np.ndarray  # [n] int64: token position of the mask in its text's ids (-1: cut away)
    token_ids: np.ndarray  # [n, k] int64
    scores: np.ndarray  # [n, k] float64 probabilities, as fill gives them
    source: Any = field(default=None, repr=False, compare=False)  # Source

    def __len__(self) -> int:
        return len(self.text_index)

    def token_strs(self) -> np.ndarray:
        """[n, k] object array of each candidate's string ("" in a cut row), by one fancy index."""
        return self.source.runtime.vocab_strings()[self.token_ids]

    def sequences(self) -> list[list[str]]:
        """Per row, the k texts with the mask filled in (decoded without [CLS]/[SEP]/[PAD])."""
        runtime, rows = self.source.runtime, self.source.rows
        ids, offsets = rows.ids.tolist(), rows.offsets.tolist()
        out = []
        for text, position, tokens in zip(
            self.text_index.tolist(), self.mask_position.tolist(), self.token_ids.tolist()
        ):
            text_ids = ids[offsets[text] : offsets[text + 1]]
            out.append([] if position < 0 else runtime.filled_sequences(text_ids, position, tokens))
        return out

    def to_dicts(self):
        """fill's output for the same call: per text, per mask, top-k dicts (one mask: its list; one
        string given: its text's result)."""
        per_row = self._dict_rows()
        counts = np.bincount(self.text_index, minlength=self.source.n_texts).tolist()  # [n_texts]
        results, start = [], 0
        for count in counts:
            per_mask = per_row[start : start + count]
            results.append(per_mask[0] if count == 1 else per_mask)
            start += count
        return results[0] if self.source.single else results

    def _dict_rows(self) -> list[list[dict]]:
        scores, tokens = self.scores.tolist(), self.token_ids.tolist()  # [n, k] each
        strs, sequences = self.token_strs().tolist(), self.sequences()
        out = []
        for position, s_row, t_row, w_row, q_row in zip(self.mask_position.tolist(), scores, tokens, strs, sequences):
            out.append(
                []
                if position < 0
                else [
                    {"score": s, "token": t, "token_str": w, "sequence": q}
                    for s, t, w, q in zip(s_row, t_row, w_row, q_row)
                ]
            )
        return out

    def to_arrow(self, sequences: bool = False):
        """A pyarrow Table, one row per mask: text_index, mask_position, and list columns token_ids,
        token_strs, scores (empty in a cut row); `sequences` adds the filled texts."""
        import pyarrow as pa

        kept = self.mask_position >= 0  # [n]
        offsets = np.zeros(len(self) + 1, np.int32)
        np.cumsum(np.where(kept, self.token_ids.shape[1], 0), out=offsets[1:])

        def lists(values):
            return pa.ListArray.from_arrays(pa.array(offsets), values)

        columns = {
            "text_index": pa.array(self.text_index),
            "mask_position": pa.array(self.mask_position),
            "token_ids": lists(pa.array(self.token_ids[kept].ravel())),
            "token_strs": lists(pa.array(self.token_strs()[kept].ravel(), pa.string())),
            "scores": lists(pa.array(self.scores[kept].ravel())),
        }
        if sequences:
            flat = [q for row in self.sequences() for q in row]
            columns["sequences"] = lists(pa.array(flat, pa.string()))
        return pa.table(columns)


@dataclass(frozen=True)
class Source:
    """What the string views of Predictions need: the runtime (vocabulary, decoding) and the token rows."""

    runtime: Any  # FillMask
    rows: TokenRows
    single: bool  # one string was given: to_dicts unwraps its text's result
    n_texts: int
