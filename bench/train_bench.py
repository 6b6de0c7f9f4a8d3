"""Training speed: tokens/s and step time of train/'s own loop pieces, random init, synthetic tokens.

Per shape (train/config.py SHAPES, with that preset's batch and chunk size unless overridden):
build_model (random init) -> MaskedOnlyMLM -> AdamW -> Accelerate -> micro_batch (whole-word
masking) -> train_step, timed after a few warm-up steps. The token ids are random (the content
of a chunk does not change the work); words are runs of 1-3 tokens, so masking behaves as on text.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from deniro_rt.data import NO_WORD, Chunks
from deniro_rt.errors import DeniroError

log = logging.getLogger(__name__)
FIRST_ID = 5  # ids below are the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], train/tokenizer.py)


@dataclass(frozen=True)
class SyntheticVocab:
    """What build_model and micro_batch read from a tokenizer."""

    size: int
    pad_token_id: int = 0
    mask_token_id: int = 4

    def __len__(self) -> int:
        return self.size


def synthetic_chunks(n_chunks: int, chunk_size: int, vocab: int, seed: int = 0) -> Chunks:
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_ID, vocab, size=(n_chunks, chunk_size)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    starts = rng.random((n_chunks, chunk_size)) < 0.75  # ~1.3 tokens per word, as WordPiece on IMDB
    words = np.cumsum(starts.ravel()).reshape(n_chunks, chunk_size).astype(np.int64)
    words[:, 0] = words[:, -1] = NO_WORD
    return Chunks(input_ids=ids, word_ids=words)


def train_config(shape: str, batch_size: int | None, chunk_size: int | None, precision: str):
    from train.config import PRESETS, SHAPES, build_config

    if shape not in SHAPES:
        raise DeniroError(f"--train-shapes: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    overrides = {"init": "random", "precision": precision, "seed": 0, "grad_accum": 1}
    if batch_size:
        overrides["batch_size"] = batch_size
    if chunk_size:
        overrides["chunk_size"] = chunk_size
    return build_config(shape if shape in PRESETS else "deniro", overrides)


def bench_shape(shape: str, steps: int, warmup: int, batch_size: int | None, chunk_size: int | None,
                precision: str, device: str) -> dict:
    import torch

    from train.loop import make_schedule, micro_batch, train_step
    from train.model import MaskedOnlyMLM, build_model

    config = train_config(shape, batch_size, chunk_size, precision)
    vocab = SyntheticVocab(config.vocab_size)
    accelerator = make_accelerator(precision, device)
    model = build_model(config, vocab)
    wrapped = MaskedOnlyMLM(model)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_procs = accelerator.num_processes
    chunks = synthetic_chunks((steps + warmup) * config.batch_size * n_procs, config.chunk_size, vocab.size)
    sched = make_schedule(config, len(chunks), n_procs)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    wrapped.train()
    times = []
    for step in tqdm(range(warmup + steps), desc=f"train {shape}", leave=False, dynamic_ncols=True):
        batch = micro_batch(config, chunks, sched, step, 0, accelerator.process_index, n_procs, vocab)
        start = time.perf_counter()
        loss = float(train_step(accelerator, wrapped, optimizer, [batch]))  # float(): waits for the device
        if step >= warmup:
            times.append(time.perf_counter() - start)
    tokens = config.batch_size * config.chunk_size * n_procs
    return {"shape": shape, "precision": precision, "device": str(accelerator.device),
            "processes": n_procs, "batch_size": config.batch_size, "chunk_size": config.chunk_size,
            "vocab_size": vocab.size, "parameters": sum(p.numel() for p in model.parameters()),
            "steps": steps, "warmup": warmup, "step_ms_mean": 1e3 * float(np.mean(times)),
            "step_ms_p50": 1e3 * float(np.median(times)),
            "tokens_per_s": tokens * len(times) / float(np.sum(times)), "last_loss": loss}


def make_accelerator(precision: str, device: str):
    """Accelerate as train/ uses it; on a CUDA machine, --device cpu keeps training on the CPU."""
    import torch
    from accelerate import Accelerator

    from train.loop import PRECISIONS

    if precision not in PRECISIONS:
        raise DeniroError(f"--train-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    force_cpu = device == "cpu" and torch.cuda.is_available()
    return Accelerator(mixed_precision=PRECISIONS[precision], cpu=force_cpu)


def run_train(shapes: list[str], steps: int, warmup: int, batch_size: int | None,
              chunk_size: int | None, precision: str, device: str) -> list[dict]:
    rows = []
    for shape in shapes:
        row = bench_shape(shape, steps, warmup, batch_size, chunk_size, precision, device)
        log.info("train %s: %.0f tokens/s, %.0f ms/step (batch %d x %d)", shape, row["tokens_per_s"],
                 row["step_ms_mean"], row["batch_size"], row["chunk_size"])
        rows.append(row)
    return rows
