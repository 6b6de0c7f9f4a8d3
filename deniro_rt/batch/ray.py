"""Offline fill-mask on Ray Data: a callable class for `Dataset.map_batches` (extra `deniro[ray]`).

    import pyarrow.parquet as pq, ray
    from deniro_rt.batch.ray import FillSpec, fill_dataset
    table = pq.read_table("reviews.parquet")                   # a column of texts with [MASK]
    blocks = [table.slice(i, 256) for i in range(0, table.num_rows, 256)]
    out = fill_dataset(ray.data.from_arrow(blocks), FillSpec(column="text"), concurrency=4, batch_size=256)

Or by hand: `ds.map_batches(FillMaskBatch, fn_constructor_kwargs={...}, batch_size=256,
batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=4), num_cpus=1)`. Arrow out whatever the
batch_format (numpy or pandas batches too): the added columns are list columns built from
FillMask.fill_arrays (no dict or JSON string per row), never pickled Python objects.
Pitfall seen on Ray 2.60: with a pool whose actors reserve every CPU of a local 2-CPU Ray,
`ray.data.read_parquet(...)` never got past its ListFiles/read tasks (also with
`ray_remote_args={"num_cpus": 0}`): the dataset hung. Reading on the driver and handing blocks over
with `from_arrow`, as above, does not need them.

Each map worker is a Ray actor holding one FillMask (one ONNX Runtime session) built once in
__init__; ORT's intra-op threads are set to the CPUs the actor reserves (`num_cpus`), because Ray
reserves CPUs but does not stop ORT from starting one thread per core of the node: N actors with
all-core sessions on one node oversubscribe it. This module imports ray and pyarrow only inside functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import DeniroError, TextError
from ..providers import usable_cores
from ..runtime import FillMask

# Columns added next to the input columns, per row (text): the first mask's best word and its score,
# then per mask (list) and per candidate (inner list, best first); sequences only when asked for.
TOP1, TOP1_SCORE = "top1", "top1_score"
MASK_POSITIONS, TOKEN_IDS, TOKEN_STRS, SCORES, SEQUENCES = (
    "mask_positions",
    "token_ids",
    "token_strs",
    "scores",
    "sequences",
)
ADDED = (TOP1, TOP1_SCORE, MASK_POSITIONS, TOKEN_IDS, TOKEN_STRS, SCORES)
# Schema metadata key of a filled table: what the worker ran ({"precision", "provider", "threads"} as JSON),
# the defaults resolved on the worker's machine, so a batch job can record it (bf16 or fp32 is per machine)
RAN_KEY = b"deniro_rt.ran"


@dataclass(frozen=True)
class FillSpec:
    """What each worker loads and how it fills: one picklable value shipped to every actor."""

    column: str = "text"  # the column holding texts with [MASK]
    model: str | None = None  # export folder; None: the shipped model
    device: str = "cpu"  # cpu | cuda | auto (per worker)
    precision: str | None = None  # bf16 | fp32 | int8 | fp16; None: the runtime's default
    top_k: int = 5  # predictions per mask kept
    cpus_per_worker: float = 1.0  # Ray num_cpus of each actor; also its ORT intra-op threads
    gpus_per_worker: float = 0.0  # Ray num_gpus of each actor (device=cuda)
    truncation: bool = False  # keep a window around the masks of over-long texts instead of failing
    sequences: bool = False  # also add the filled sentences (a string per candidate: costly)
    truncation_option: str = "truncation=True"  # how a too-long text's error spells the fix (batch: --truncation)

    def threads(self) -> int:
        """ORT intra-op threads of one worker: its reserved CPUs, at least one."""
        return max(1, math.ceil(self.cpus_per_worker))


def text_columns(preds, sequences: bool = False) -> dict[str, Any]:
    """Per text: top1, top1_score and list columns nesting Predictions' per-mask rows ([] for a mask
    truncation cut away). Returns pyarrow arrays, one entry per text."""
    import pyarrow as pa

    per_mask = preds.to_arrow(sequences=sequences)  # one row per mask
    counts = np.bincount(preds.text_index, minlength=preds.source.n_texts)  # [n_texts] masks per text
    offsets = np.zeros(len(counts) + 1, np.int32)  # [n_texts + 1]
    np.cumsum(counts, out=offsets[1:])
    first = offsets[:-1]  # [n_texts] row of each text's first mask
    cut = preds.mask_position[first] < 0  # its first mask cut away by truncation: no top1
    columns = {
        TOP1: pa.array(np.where(cut, "", preds.token_strs()[first, 0]).tolist(), pa.string()),
        TOP1_SCORE: pa.array(np.where(cut, np.nan, preds.scores[first, 0])),
    }

    def nest(name):
        return pa.ListArray.from_arrays(pa.array(offsets), per_mask.column(name).combine_chunks())

    columns[MASK_POSITIONS] = nest("mask_position")
    for name in (TOKEN_IDS, TOKEN_STRS, SCORES) + ((SEQUENCES,) if sequences else ()):
        columns[name] = nest(name)
    return columns


class FillMaskBatch:
    """Ray Data `map_batches` callable: adds text_columns' columns (from FillMask.fill_arrays) to a batch
    (a pyarrow Table, what fill_dataset asks for, a dict of numpy arrays or pandas) and returns a pyarrow
    Table, any batch_format. A mask truncation cut away is recorded in the output (mask_positions -1, empty
    lists), not warned about: the runtime's warning could only number texts within one batch. The table's
    schema metadata says what ran (RAN_KEY)."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
        top_k: int = 5,
        column: str = "text",
        truncation: bool = False,
        sequences: bool = False,
        batch_size: int = 256,
        truncation_option: str = "truncation=True",
    ):
        self.runtime = FillMask(model, device=device, precision=precision, threads=threads)
        self.top_k, self.column, self.truncation, self.sequences = top_k, column, truncation, sequences
        self.batch_size, self.truncation_option = batch_size, truncation_option
        ran = {
            "precision": self.runtime.precision,
            "provider": self.runtime.provider,
            "threads": threads or usable_cores(),
        }
        self.ran = json.dumps(ran).encode()  # RAN_KEY's value

    def predict(self, texts: list[str]) -> dict[str, Any]:
        try:
            preds = self.runtime.fill_arrays(
                texts, top_k=self.top_k, batch_size=self.batch_size, truncation=self.truncation, warn_truncated=False
            )
        except TextError as exc:  # a too-long text: the fix as the caller spells it (truncation_option)
            raise exc.naming(self.truncation_option) from None
        return text_columns(preds, self.sequences)

    def __call__(self, batch: Any):
        """The batch with the added columns, always as a pyarrow Table: from a numpy or pandas batch's
        nested lists Ray Data would write pickled Python objects (its fallback), not list columns."""
        table = as_arrow(batch)
        added = self.predict(table.column(self.column).to_pylist())  # a null stays None: the runtime names it
        for name, values in added.items():
            table = table.append_column(name, values)
        return table.replace_schema_metadata({**(table.schema.metadata or {}), RAN_KEY: self.ran})


def as_arrow(batch: Any):
    """A map_batches batch (pyarrow Table, dict of numpy arrays, pandas DataFrame) as a pyarrow Table,
    converted as Ray Data converts it (its tensor columns too) where Ray is installed."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch
    try:
        from ray.data.block import BlockAccessor
    except ImportError:  # used outside Ray
        return pa.table(batch) if isinstance(batch, dict) else pa.Table.from_pandas(batch, preserve_index=False)
    if isinstance(batch, dict):
        return BlockAccessor.batch_to_arrow_block(batch)
    return BlockAccessor.for_block(batch).to_arrow()


def fill_dataset(dataset, spec: FillSpec, concurrency: int | tuple[int, int] = 1, batch_size: int = 256):
    """dataset.map_batches with a fixed pool of `concurrency` FillMaskBatch actors (or (min, max):
    an autoscaling pool), each reserving `spec.cpus_per_worker` CPUs and running that many threads."""
    import ray.data

    sizes = (
        {"size": concurrency}
        if isinstance(concurrency, int)
        else {"min_size": concurrency[0], "max_size": concurrency[1]}
    )
    return dataset.map_batches(
        FillMaskBatch,
        fn_constructor_kwargs={**_constructor_kwargs(spec), "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(**sizes),
        num_cpus=spec.cpus_per_worker,
        num_gpus=spec.gpus_per_worker or None,
    )


def _constructor_kwargs(spec: FillSpec) -> dict:
    wanted = ("model", "device", "precision", "top_k", "column", "truncation", "sequences", "truncation_option")
    kwargs = {k: v for k, v in asdict(spec).items() if k in wanted}
    return {**kwargs, "threads": spec.threads()}


def check_node_fits(cpus: float, gpus: float, cpu_flag: str, gpu_flag: str) -> None:
    """Refuse an actor no node of the connected cluster can hold: Ray would wait for one forever (it only
    logs "No available node types can fulfill resource request"), so the job or deployment would hang."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for flag, resource, wanted in ((cpu_flag, "CPU", cpus), (gpu_flag, "GPU", gpus)):
        largest = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if wanted > largest:
            raise DeniroError(
                f"{flag} {wanted:g} is more than any node of the Ray cluster has (the largest: {largest:g} "
                f"{resource}s), so Ray would wait forever; pass {flag} {largest:g} or less"
            )
