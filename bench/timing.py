"""Latency (batch 1, percentiles) and throughput (sentences/s) of one engine on one text list.

Every timed call is end to end (strings in, decoded suggestions out) and is followed by the
device synchronisation, so GPU work is never left running outside the clock.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .engines import Engine, Prediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    warmup: int  # untimed calls first
    sync: object  # callable: device synchronisation
    seconds: float | None = None  # throughput: stop after this long (None: run all sentences)


def _cycle(texts: list[str], n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(texts), n))


def latency(engine: Engine, texts: list[str], samples: int, timing: Timing, desc: str) -> dict:
    """p50/p90/p99/mean milliseconds of `samples` one-text calls (texts cycled)."""
    warm, calls = [[t] for t in _cycle(texts, timing.warmup)], [[t] for t in _cycle(texts, samples)]
    engine.prepare(warm + calls, 1)  # untimed; only model-only engines prepare inputs
    for call in warm:
        engine.fill_batch(call, 1)
    timing.sync()
    times = []
    for call in tqdm(calls, desc=desc, leave=False, dynamic_ncols=True):
        start = time.perf_counter()
        engine.fill_batch(call, 1)
        timing.sync()
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "samples": len(ms),
    }


def throughput(
    engine: Engine, texts: list[str], n: int, batch: int, timing: Timing, desc: str
) -> tuple[dict, Prediction]:
    """Sentences/s over n texts (cycled), one call per batch; also the predictions of one pass."""
    warm = [_cycle(texts, batch) for _ in range(timing.warmup)]
    todo = _cycle(texts, n)
    calls = [todo[i : i + batch] for i in range(0, n, batch)]
    engine.prepare(warm + calls, batch)  # untimed; only model-only engines prepare inputs
    for call in warm:
        engine.fill_batch(call, batch)
    timing.sync()
    done, elapsed, first = 0, 0.0, []
    bar = tqdm(total=n, desc=desc, leave=False, dynamic_ncols=True)
    while done < n and (timing.seconds is None or elapsed < timing.seconds):
        chunk = calls[done // batch]
        start = time.perf_counter()
        pred = engine.fill_batch(chunk, batch)
        timing.sync()
        elapsed += time.perf_counter() - start
        if done < len(texts):
            first.append(pred)
        done += len(chunk)
        bar.update(len(chunk))
    bar.close()
    if done < n:
        log.info("%s: stopped after %d of %d sentences (--throughput-seconds %s)", desc, done, n, timing.seconds)
    stats = {
        "sentences_per_s": done / elapsed,
        "sentences": done,
        "seconds": elapsed,
        "distinct_texts": min(len(texts), done),
    }
    return stats, _join(first, min(len(texts), done))


def _join(parts: list[Prediction], n: int) -> Prediction:
    ids = np.concatenate([p.ids for p in parts])[:n]
    logprobs = np.concatenate([p.logprobs for p in parts])[:n]
    return Prediction(ids, logprobs)
