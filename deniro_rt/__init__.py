"""deniro_rt: fast batched fill-mask on ONNX Runtime. Imports no torch and no transformers.

import deniro_rt
deniro_rt.fill(["This is a great [MASK]!"])          # the shipped IMDB model, offline
deniro_rt.fill_arrays(texts).token_ids              # the same as NumPy columns (fast in batches)
fm = deniro_rt.FillMask("path/to/export", device="cuda")  # reuse one session
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .data import MaskedBatch
from .errors import ArtifactError, DeniroError, DeniroTypeError, TextError, TooLongError
from .predictions import Predictions
from .runtime import FillMask

__all__ = [
    "FillMask",
    "Predictions",
    "fill",
    "fill_arrays",
    "perplexity",
    "DeniroError",
    "DeniroTypeError",
    "ArtifactError",
    "TextError",
    "TooLongError",
]
__version__ = "0.1.0"


def _runtime(model: str | Path | None, device: str, precision: str | None) -> FillMask:
    """Sessions are costly to build: module-level calls reuse one per (model, device, precision)."""
    if not (model is None or isinstance(model, (str, Path))):
        raise DeniroTypeError(f"model must be a folder path, got {type(model).__name__} {model!r}")
    for name, value in (("device", device), ("precision", precision)):
        if not (value is None or isinstance(value, str)):  # a list would fail in the cache, far from here
            raise DeniroTypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    with _BUILDING:  # threads whose first calls come together share one session (each built its own)
        return _cached_runtime(None if model is None else str(model), device, precision)


_BUILDING = threading.Lock()  # held while _cached_runtime looks up or builds a session


@lru_cache(maxsize=4)
def _cached_runtime(model: str | None, device: str, precision: str | None) -> FillMask:
    return FillMask(model, device=device, precision=precision)


def fill(
    texts: str | Sequence[str],
    top_k: int = 5,
    targets: Sequence[str] | str | None = None,
    batch_size: int = 64,
    model: str | Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    truncation: bool = False,
    joint: bool = False,
):
    """Predict the word at each [MASK].

    texts: a string or a list of strings, each with one or more [MASK] (case-sensitive).
    Returns, like transformers' FillMaskPipeline, per text and per mask a list of top_k dicts
    {"score": probability over the whole vocabulary, "token": id, "token_str", "sequence"}; a text
    with one mask gives that mask's list directly, a single string gives its text's result directly.
    targets: rank only these words; a word of several word pieces is scored as a whole word (its mask
    is widened to one mask per piece and the score is the product of the pieces' probabilities;
    "token" is then the tuple of piece ids). joint=True fills all masks of a text together (greedy:
    the most confident mask first, then re-run) and returns one {"sequence", "score", "tokens",
    "token_strs"} per text. truncation=True keeps a window around the masks of a text longer than
    the model's maximum (masks outside it get []; one warning per call counts those texts and names the
    first five) instead of raising.
    model: an export folder (python -m export --onnx --output DIR); default: the shipped model.
    """
    runtime = _runtime(model, device, precision)
    return runtime.fill(texts, top_k=top_k, targets=targets, batch_size=batch_size, truncation=truncation, joint=joint)


def fill_arrays(
    texts: str | Sequence[str],
    top_k: int = 5,
    batch_size: int = 64,
    model: str | Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    truncation: bool = False,
) -> Predictions:
    """fill's top-k predictions as columns: a Predictions of NumPy arrays, one row per mask in input
    order (text_index [n], mask_position [n], token_ids [n, k], scores [n, k]), with token_strs(),
    to_arrow() and to_dicts() (exactly fill's output). No dict or string per candidate is built
    unless asked for: the fast way to fill many texts. Same checks and errors as fill."""
    runtime = _runtime(model, device, precision)
    return runtime.fill_arrays(texts, top_k=top_k, batch_size=batch_size, truncation=truncation)


def perplexity(
    masked: MaskedBatch,
    model: str | Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 64,
) -> dict:
    """Perplexity on premasked rows (deniro_rt.data.premask): {"perplexity", "nll", "tokens"}."""
    runtime = _runtime(model, device, precision)
    return runtime.perplexity(masked, batch_size=batch_size)
