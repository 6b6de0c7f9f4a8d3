"""Training data: the validation reviews carved from train, extra MLM text, and whole-word masking in torch.

The protocol (issue 23): every choice (learning rate, schedule, epochs, checkpoint) reads the validation
reviews; the test split is masked once and scored once, after training, and can never train.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from deniro_rt.data import IGNORE_INDEX, NO_WORD, Chunks, MaskedBatch
from deniro_rt.errors import DeniroError

from .config import TrainConfig

VALIDATION = "validation"  # the name of the held-out split carved from --train-splits


def split_list(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


def check_splits(config: TrainConfig) -> None:
    """The test split never trains (nor shapes a new vocabulary); the validation split is not a file."""
    test = config.eval_split
    for flag, value in (
        ("--train-splits", config.train_splits),
        ("--extra-splits", config.extra_splits),
        ("--tokenizer-splits", config.tokenizer_splits),
    ):
        if test in split_list(value):
            raise DeniroError(
                f"{flag} {value}: the test split {test!r} never trains; it is scored once, after "
                f"training. Train on train/unsupervised (choices read the validation split)"
            )
        if VALIDATION in split_list(value):
            raise DeniroError(
                f"{flag} {value}: {VALIDATION!r} is carved from --train-splits (--val-fraction), not a split to read"
            )
    if not split_list(config.train_splits):
        raise DeniroError("--train-splits is empty; name at least one split, e.g. train")
    if not 0 <= config.val_fraction < 1:
        raise DeniroError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")


def carve_validation(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation): a seeded random `fraction` of the whole reviews (at least one) held out."""
    if fraction <= 0:
        return texts, []
    n_val = max(1, round(len(texts) * fraction))
    if n_val >= len(texts):
        raise DeniroError(f"--val-fraction {fraction} leaves no training review out of {len(texts)}")
    held = np.zeros(len(texts), dtype=bool)
    held[np.random.default_rng([seed, 0]).permutation(len(texts))[:n_val]] = True
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


# --------------------------------------------------------------------------- masking on the device
@dataclass(frozen=True)
class DeviceChunks:
    """The training chunks where the model runs, with what whole-word masking needs precomputed."""

    input_ids: torch.Tensor  # [n_chunks, chunk_size] int64
    word_start: torch.Tensor  # [n_chunks, chunk_size] bool: a word's first piece (a chunk's first word too)
    is_word: torch.Tensor  # [n_chunks, chunk_size] bool: not [CLS]/[SEP]/[PAD]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def to_device(chunks: Chunks, device) -> DeviceChunks:
    is_word = chunks.word_ids != NO_WORD
    starts = is_word.copy()
    starts[:, 1:] &= chunks.word_ids[:, 1:] != chunks.word_ids[:, :-1]  # as deniro_rt.data._select_words
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return DeviceChunks(as_tensor(chunks.input_ids.astype(np.int64)), as_tensor(starts), as_tensor(is_word))


def step_generator(device, *key: int) -> torch.Generator:
    """A generator on `device` whose seed derives from the key alone (resumable, rank- and step-specific)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class TorchBatch:
    input_ids: torch.Tensor  # [batch, seq] int64 with [MASK] / random / kept pieces at the chosen words
    labels: torch.Tensor  # [batch, seq] int64, original id where scored, IGNORE_INDEX elsewhere


def mask_rows(
    chunks: DeviceChunks,
    rows: torch.Tensor,
    gen: torch.Generator,
    mask_token_id: int,
    vocab_size: int,
    probability: float,
) -> TorchBatch:
    """deniro_rt.data.whole_word_mask in torch: a Bernoulli draw per word (read at its first piece), then
    80/10/10 [MASK]/random/kept per chosen piece. No host round trip, no Python loop."""
    ids, starts, is_word = chunks.input_ids[rows], chunks.word_start[rows], chunks.is_word[rows]  # [B, T]
    device = ids.device
    positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
    start_of = torch.where(starts, positions, 0).cummax(dim=1).values  # [B, T] where each piece's word starts
    draw = torch.rand(ids.shape, generator=gen, device=device)
    selected = is_word & (draw.gather(1, start_of) < probability)
    roll = torch.rand(ids.shape, generator=gen, device=device)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=gen, device=device)
    masked = torch.where(
        selected & (roll < 0.8), mask_token_id, torch.where(selected & (roll >= 0.8) & (roll < 0.9), random_ids, ids)
    )
    return TorchBatch(masked, torch.where(selected, ids, IGNORE_INDEX))


@lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n_chunks: int) -> np.ndarray:
    """The data order of one epoch (cached: every micro-step of the epoch reads it)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_chunks)
    order.flags.writeable = False
    return order


@lru_cache(maxsize=2)
def device_epoch_order(seed: int, epoch: int, n_chunks: int, device: torch.device) -> torch.Tensor:
    """epoch_order on `device`, copied there once an epoch. A copy a step would make the host wait every
    step: a copy from pageable host memory waits for the device's queue to drain first."""
    return torch.from_numpy(epoch_order(seed, epoch, n_chunks).copy()).to(device)


def as_masked_batch(batch: TorchBatch | MaskedBatch) -> MaskedBatch:
    """Numpy view of either kind of batch (tests and traces)."""
    if isinstance(batch, MaskedBatch):
        return batch
    return MaskedBatch(batch.input_ids.cpu().numpy(), batch.labels.cpu().numpy())
