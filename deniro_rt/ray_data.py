"""Offline fill-mask on Ray Data: a callable class for `Dataset.map_batches` (extra `deniro[ray]`).

    import pyarrow.parquet as pq, ray
    from deniro_rt.ray_data import FillSpec, fill_dataset
    table = pq.read_table("reviews.parquet")                   # a column of texts with [MASK]
    blocks = [table.slice(i, 256) for i in range(0, table.num_rows, 256)]
    out = fill_dataset(ray.data.from_arrow(blocks), FillSpec(column="text"), concurrency=4, batch_size=256)

Or by hand: `ds.map_batches(FillMaskBatch, fn_constructor_kwargs={...}, batch_size=256,
compute=ray.data.ActorPoolStrategy(size=4), num_cpus=1)`. (Ray 2.60 deprecates map_batches'
`concurrency=` in favour of `compute=ActorPoolStrategy(...)`.) Pitfall seen on Ray 2.60: with a
pool whose actors reserve every CPU of a local 2-CPU Ray, `ray.data.read_parquet(...)` never got
past its ListFiles/read tasks (also with `ray_remote_args={"num_cpus": 0}`): the dataset hung.
Reading on the driver and handing blocks over with `from_arrow`, as above, does not need them.

Each map worker is a Ray actor holding one FillMask (one ONNX Runtime session) built once in
__init__; ORT's intra-op threads are set to the CPUs the actor reserves (`num_cpus`), because Ray
reserves CPUs but does not stop ORT from starting one thread per core of the node: N actors with
all-core sessions on one node oversubscribe it. This module imports ray only inside functions.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .runtime import FillMask

# Columns added next to the input columns.
TOP1, TOP1_SCORE, PREDICTIONS = "top1", "top1_score", "predictions"


@dataclass(frozen=True)
class FillSpec:
    """What each worker loads and how it fills: one picklable value shipped to every actor."""

    column: str = "text"  # the column holding texts with [MASK]
    model: str | None = None  # export folder; None: the shipped model
    device: str = "cpu"  # cpu | cuda | auto (per worker)
    precision: str | None = None  # fp32 | int8 | fp16; None: the device's best the artifact has
    top_k: int = 5  # predictions per mask kept in the `predictions` column
    cpus_per_worker: float = 1.0  # Ray num_cpus of each actor; also its ORT intra-op threads
    gpus_per_worker: float = 0.0  # Ray num_gpus of each actor (device=cuda)
    truncation: bool = False  # keep a window around the masks of over-long texts instead of failing

    def threads(self) -> int:
        """ORT intra-op threads of one worker: its reserved CPUs, at least one."""
        return max(1, math.ceil(self.cpus_per_worker))


def summarize(result: list) -> tuple[str, float, str]:
    """(top1 token_str of the first mask, its score, all predictions as JSON) of one text's fill.

    `result` is what FillMask.fill gives per text: a list of dicts (one mask) or a list of such
    lists (several masks; an empty list for a mask that truncation cut away)."""
    per_mask = [result] if not result or isinstance(result[0], dict) else result
    first = per_mask[0][0] if per_mask and per_mask[0] else None
    if first is None:
        return "", float("nan"), json.dumps(result)
    return first["token_str"], float(first["score"]), json.dumps(result)


class FillMaskBatch:
    """Ray Data `map_batches` callable: adds `top1`, `top1_score` and `predictions` (JSON, the exact
    `deniro_rt.fill` result of the row's text) to a batch (dict of numpy arrays or pandas)."""

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, top_k: int = 5, column: str = "text", truncation: bool = False):
        self.runtime = FillMask(model, device=device, precision=precision, threads=threads)
        self.top_k, self.column, self.truncation = top_k, column, truncation

    def predict(self, texts: list[str]) -> dict[str, np.ndarray]:
        results = self.runtime.fill(texts, top_k=self.top_k, truncation=self.truncation)
        rows = [summarize(r) for r in results]
        return {TOP1: np.array([r[0] for r in rows], dtype=object),
                TOP1_SCORE: np.array([r[1] for r in rows], dtype=np.float64),
                PREDICTIONS: np.array([r[2] for r in rows], dtype=object)}

    def __call__(self, batch: Any):
        texts = [str(t) for t in list(batch[self.column])]
        added = self.predict(texts)
        if isinstance(batch, dict):  # batch_format="numpy": a new dict (input arrays may be read-only)
            return {**batch, **added}
        out = batch.copy()  # pandas
        for name, values in added.items():
            out[name] = values
        return out


def fill_dataset(dataset, spec: FillSpec, concurrency: int | tuple[int, int] = 1, batch_size: int = 256):
    """dataset.map_batches with a fixed pool of `concurrency` FillMaskBatch actors (or (min, max):
    an autoscaling pool), each reserving `spec.cpus_per_worker` CPUs and running that many threads."""
    import ray.data

    sizes = {"size": concurrency} if isinstance(concurrency, int) else \
        {"min_size": concurrency[0], "max_size": concurrency[1]}
    return dataset.map_batches(
        FillMaskBatch, fn_constructor_kwargs=_constructor_kwargs(spec),
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(**sizes),
        num_cpus=spec.cpus_per_worker, num_gpus=spec.gpus_per_worker or None)


def _constructor_kwargs(spec: FillSpec) -> dict:
    wanted = ("model", "device", "precision", "top_k", "column", "truncation")
    kwargs = {k: v for k, v in asdict(spec).items() if k in wanted}
    return {**kwargs, "threads": spec.threads()}
