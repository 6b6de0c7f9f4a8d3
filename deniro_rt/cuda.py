"""CUDA execution-provider hot path: IO binding, CUDA graphs over bucketed shapes, placement check.

Ran on an NVIDIA H100 on 2026-11-26 through bench/gpu/run.sh (bench/results/h100-2026-11-26/run1/check-base.json,
the random-init base shape): CUDA graphs accepted for the fp32 and fp16 fast graphs (fp16, B=1: 0.46 ms
end to end with graphs, 0.99 ms without), no compute node on the CPU (5 shape-only nodes, 0 Memcpy). The
pytest GPU tests (`pytest -m gpu`) have not run on a GPU yet. What runs without CUDA, and is tested on CPU
(tests/test_gpu.py):

* the bucketing: `choose_bucket` / `pad_feed` / `unpad_outputs` are pure numpy functions. A padded
  feed gives the same answers as the unpadded one: padded columns are masked out of attention
  (as the per-batch padding already is), padded rows are separate sequences nobody reads, padded
  mask rows point at position 0 of row 0 and their outputs are cut off;
* `node_placement`: which execution provider ran each node (from ORT's profiling trace);
* `CudaBinding`'s per-thread buffers, kept for the `max_shapes` most recently used feed shapes (device "cpu").

CUDA graphs (ORT's `enable_cuda_graph` provider option): a captured graph replays fixed device
addresses and fixed shapes, so each bucket (batch, seq, n_masks, n_targets, k) has its own bound
input/output device buffers and its own `gpu_graph_id` run option (one session, several graphs;
ORT reserves id 0, and -1 runs without capture). Shapes outside the buckets, and everything once a
capture has failed, run through plain IO binding with gpu_graph_id -1. ORT refuses graph capture
when the graph needs Memcpy nodes (a compute node on the CPU); shape-only CPU nodes are allowed.

The CPU path never imports onnxruntime's CUDA pieces; this module imports fine without CUDA.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .artifact import FAST_OUTPUTS
from .errors import CudaUnavailable
from .providers import CPU, CUDA

log = logging.getLogger(__name__)
# TopK reads k from host memory on every EP, so `top_k` stays a CPU tensor (no device round trip,
# no Memcpy node; a captured graph bakes k in, so k is part of the bucket key).
HOST_INPUTS = {"top_k"}
GRAPH_ID = "gpu_graph_id"  # onnxruntime run-option key (kOrtRunOptionsConfigCudaGraphAnnotation)
NO_GRAPH = "-1"
MAX_BOUND_SHAPES = 32  # feed shapes whose plain-IO-binding device buffers one thread keeps (least recently used go)
# Ops ORT may place on the CPU for shape arithmetic without a Memcpy (allowed next to CUDA graphs).
SHAPE_OPS = {
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Cast",
    "Range",
    "Reshape",
    "ConstantOfShape",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Equal",
    "Where",
    "Expand",
    "Size",
}


# --------------------------------------------------------------------------- buckets (pure)
@dataclass(frozen=True)
class Bucket:
    """One captured-graph shape: the padded sizes of every input."""

    batch: int
    seq: int
    masks: int
    targets: int
    k: int


@dataclass(frozen=True)
class BucketSpec:
    """Which shapes get a CUDA graph. Larger work runs uncaptured: there launch overhead is noise."""

    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    seqs: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    max_tokens: int = 512 * 32  # batch x seq of the largest captured shape
    max_graphs: int = 64  # captured graphs per session (each keeps its device buffers)


def round_up(n: int, sizes: tuple[int, ...]) -> int | None:
    """The smallest size >= n, or None when n is larger than all of them."""
    for size in sorted(sizes):
        if size >= n:
            return size
    return None


def mask_bucket(n: int) -> int:
    """n mask rows padded to the next power of two (1, 2, 4, ...)."""
    return 1 << max(0, int(n) - 1).bit_length()


def choose_bucket(
    spec: BucketSpec, batch: int, seq: int, masks: int, targets: int, k: int, max_positions: int
) -> Bucket | None:
    """The bucket a feed of this shape is padded to, or None when it runs uncaptured."""
    b = round_up(batch, spec.batches)
    s = round_up(seq, tuple(x for x in spec.seqs if x < max_positions) + (max_positions,))
    if b is None or s is None or b * s > spec.max_tokens or masks < 1:
        return None
    return Bucket(batch=b, seq=s, masks=mask_bucket(masks), targets=targets, k=k)


def feed_shape(feed: dict[str, np.ndarray]) -> tuple[int, int, int, int, int]:
    """(batch, seq, n_masks, n_targets, k) of a fast-graph feed."""
    batch, seq = feed["input_ids"].shape
    return batch, seq, len(feed["mask_index"]), feed["target_ids"].shape[1], int(feed["top_k"][0])


def pad_feed(feed: dict[str, np.ndarray], bucket: Bucket, pad_id: int) -> dict[str, np.ndarray]:
    """The feed padded up to `bucket`; the real rows' answers do not change.

    input_ids/attention_mask [B, S] -> [Bb, Sb]: new columns are [PAD] with attention 0 (what the
    per-batch padding does already); new rows are [PAD] sequences that attend to their first
    position only (never an all-masked softmax row). mask_index holds flat positions row * S + col:
    re-based to row * Sb + col; the extra mask rows point at position 0 and are cut off afterwards.
    """
    ids, attention = feed["input_ids"], feed["attention_mask"]
    batch, seq = ids.shape
    if batch > bucket.batch or seq > bucket.seq or len(feed["mask_index"]) > bucket.masks:
        raise ValueError(f"feed {ids.shape} with {len(feed['mask_index'])} masks does not fit {bucket}")
    out_ids = np.full((bucket.batch, bucket.seq), pad_id, dtype=np.int64)  # [Bb, Sb]
    out_ids[:batch, :seq] = ids
    out_att = np.zeros((bucket.batch, bucket.seq), dtype=np.int64)  # [Bb, Sb]
    out_att[:batch, :seq] = attention
    out_att[batch:, 0] = 1
    rows, cols = np.divmod(np.asarray(feed["mask_index"], dtype=np.int64), seq)
    mask_index = np.zeros(bucket.masks, dtype=np.int64)  # [Mb]
    mask_index[: len(rows)] = rows * bucket.seq + cols
    targets = np.zeros((bucket.masks, feed["target_ids"].shape[1]), dtype=np.int64)  # [Mb, t]
    targets[: len(rows)] = feed["target_ids"]
    return {
        "input_ids": out_ids,
        "attention_mask": out_att,
        "mask_index": mask_index,
        "target_ids": targets,
        "top_k": np.asarray(feed["top_k"], dtype=np.int64),
    }


def unpad_outputs(outputs: list[np.ndarray], n_masks: int) -> list[np.ndarray]:
    """The real mask rows of each [Mb, ...] output."""
    return [out[:n_masks] for out in outputs]


# --------------------------------------------------------------------------- sessions
EXACT_FP32 = {"use_tf32": "0"}  # CUDA EP option: fp32 graphs compute in fp32


def provider_options(cuda_graph: bool, device_id: int = 0) -> dict[str, str]:
    # use_tf32 off: ORT's CUDA EP rounds fp32 matmuls to TF32 by default, which put the fp32 graph
    # 6e-4 (relative) off PyTorch fp32 on an H100; fp16 graphs do not use TF32, so nothing else changes.
    return {"device_id": str(device_id), "enable_cuda_graph": "1" if cuda_graph else "0", **EXACT_FP32}


def make_session(
    path: str, options: ort.SessionOptions, cuda_graph: bool, device_id: int = 0
) -> tuple[ort.InferenceSession, bool]:
    """(session on CUDA, whether CUDA graphs are on). ORT refuses graphs for some graphs (Memcpy
    nodes): then the session is built again without them, with a warning."""
    if cuda_graph:
        try:
            session = ort.InferenceSession(path, options, providers=[(CUDA, provider_options(True, device_id)), CPU])
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            log.warning("CUDA graphs unavailable for %s (%s); running without them", path, exc)
        else:
            return on_cuda(session, path), True
    session = ort.InferenceSession(path, options, providers=[(CUDA, provider_options(False, device_id)), CPU])
    return on_cuda(session, path), False


def on_cuda(session: ort.InferenceSession, path: str) -> ort.InferenceSession:
    """The session, if CUDA runs it. When the CUDA EP does not load (a CUDA or cuDNN library missing from
    LD_LIBRARY_PATH, no visible GPU), ORT builds the session on the CPU alone and only logs a warning, while
    get_available_providers() still lists CUDA: "CUDA" timings would be CPU timings, or IO binding would fail
    later with an unrelated error."""
    if session.get_providers()[0] != CUDA:
        raise CudaUnavailable(
            f"device='cuda': ONNX Runtime could not start {CUDA} for {path} (it fell back to "
            f"{', '.join(session.get_providers())}); check the CUDA and cuDNN libraries onnxruntime-gpu needs "
            "(LD_LIBRARY_PATH) and the GPU, or use device='cpu'"
        )
    return session


def make_runner(
    session: ort.InferenceSession,
    cuda_graph: bool,
    pad_id: int,
    max_positions: int,
    device_id: int = 0,
    spec: BucketSpec | None = None,
):
    """The run(feed) -> outputs callable FillMask uses on CUDA."""
    plain = CudaBinding(session, device_id, no_graph=cuda_graph)
    if not cuda_graph:
        return plain.run
    return GraphRunner(session, plain, pad_id, max_positions, device_id, spec or BucketSpec()).run


# --------------------------------------------------------------------------- runners
class CudaBinding:
    """Runs the fast graph with inputs in device buffers; only the small outputs come back to host.

    Buffers are per thread (a session is shared by threads, an OrtValue being written is not) and per feed
    shape, so a shape that recurs (a benchmark, steady traffic) allocates nothing. Only the `max_shapes` most
    recently used shapes keep theirs: unbatched traffic has a new (batch, seq) shape nearly every call, and a
    long-running service would otherwise hold device memory for every shape it ever saw. With `no_graph`
    (the session has CUDA graphs on), every run says gpu_graph_id -1: never capture these shapes.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        device_id: int = 0,
        no_graph: bool = False,
        device: str = "cuda",
        max_shapes: int = MAX_BOUND_SHAPES,
    ):
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be at least 1, got {max_shapes}")
        self.session, self.max_shapes = session, max_shapes
        self.device_id, self.device = device_id, device  # device "cpu": the same plumbing, testable anywhere
        self.local = threading.local()
        self.run_options = ort.RunOptions()
        if no_graph:
            self.run_options.add_run_config_entry(GRAPH_ID, NO_GRAPH)

    def _buffers(self) -> OrderedDict:
        """This thread's {feed shape: {input name: OrtValue}}, least recently used first."""
        if not hasattr(self.local, "buffers"):
            self.local.buffers = OrderedDict()
        return self.local.buffers

    def _device_values(self, feed: dict[str, np.ndarray]) -> dict[str, ort.OrtValue]:
        """The feed's device inputs in this thread's buffers for its shape (allocated on first sight; beyond
        max_shapes the least recently used shape's are freed: a finished run holds none of them)."""
        shape = tuple((name, array.shape, array.dtype.str) for name, array in feed.items())
        buffers = self._buffers()
        values = buffers.get(shape)
        if values is None:
            values = {
                name: ort.OrtValue.ortvalue_from_numpy(a, self.device, self.device_id) for name, a in feed.items()
            }
            buffers[shape] = values
            while len(buffers) > self.max_shapes:
                buffers.popitem(last=False)
            return values
        buffers.move_to_end(shape)
        for name, array in feed.items():
            values[name].update_inplace(array)  # host -> device copy into the existing buffer
        return values

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        on_device = {n: np.ascontiguousarray(a) for n, a in feed.items() if n not in HOST_INPUTS}
        for name, value in self._device_values(on_device).items():
            binding.bind_ortvalue_input(name, value)
        for name in HOST_INPUTS & feed.keys():
            binding.bind_cpu_input(name, feed[name])
        for name in FAST_OUTPUTS:
            binding.bind_output(name, "cpu")  # [n, k] top-k rows only: tiny next to [batch, seq, vocab]
        self.session.run_with_iobinding(binding, self.run_options)
        return binding.copy_outputs_to_cpu()


class _Slot:
    """One bucket's captured graph: its binding, its fixed device buffers and its graph id."""

    def __init__(self, session, bucket: Bucket, graph_id: int, device: tuple[str, int], output_types: dict):
        zeros = pad_feed_template(bucket)
        self.inputs = {
            name: (array if name in HOST_INPUTS else ort.OrtValue.ortvalue_from_numpy(array, *device))
            for name, array in zeros.items()
        }
        out_shapes = {
            "topk_logprobs": (bucket.masks, bucket.k),
            "topk_ids": (bucket.masks, bucket.k),
            "target_logprobs": (bucket.masks, bucket.targets),
        }
        self.outputs = [
            ort.OrtValue.ortvalue_from_shape_and_type(out_shapes[name], output_types[name], *device)
            for name in FAST_OUTPUTS
        ]
        self.binding = session.io_binding()
        for name, value in self.inputs.items():
            if name in HOST_INPUTS:
                self.binding.bind_cpu_input(name, value)  # k is fixed per bucket
            else:
                self.binding.bind_ortvalue_input(name, value)
        for name, value in zip(FAST_OUTPUTS, self.outputs):
            self.binding.bind_ortvalue_output(name, value)
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry(GRAPH_ID, str(graph_id))
        self.graph_id = graph_id

    def run(self, session, padded: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in self.inputs.items():
            if name not in HOST_INPUTS:
                value.update_inplace(padded[name])  # same device address: what the graph replays
        session.run_with_iobinding(self.binding, self.run_options)
        self.binding.synchronize_outputs()
        return [value.numpy() for value in self.outputs]


def pad_feed_template(bucket: Bucket) -> dict[str, np.ndarray]:
    """Zero inputs of a bucket's shape (top_k holds the bucket's k)."""
    return {
        "input_ids": np.zeros((bucket.batch, bucket.seq), np.int64),
        "attention_mask": np.ones((bucket.batch, bucket.seq), np.int64),
        "mask_index": np.zeros(bucket.masks, np.int64),
        "target_ids": np.zeros((bucket.masks, bucket.targets), np.int64),
        "top_k": np.array([bucket.k], np.int64),
    }


NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}


class GraphRunner:
    """CUDA graphs per bucket; anything else (or everything, after a failed capture) runs plain."""

    def __init__(
        self,
        session,
        plain: CudaBinding,
        pad_id: int,
        max_positions: int,
        device_id: int,
        spec: BucketSpec,
        device: str = "cuda",
    ):
        self.session, self.plain, self.pad_id = session, plain, pad_id
        self.max_positions, self.device, self.spec = max_positions, (device, device_id), spec
        self.slots: dict[Bucket, _Slot] = {}
        self.lock = threading.Lock()  # one graph's buffers are shared: runs of a bucket are serial
        self.enabled = True
        self.output_types = {o.name: NUMPY_TYPES[o.type] for o in session.get_outputs()}

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch, seq, masks, targets, k = feed_shape(feed)
        bucket = choose_bucket(self.spec, batch, seq, masks, targets, k, self.max_positions) if self.enabled else None
        padded = None if bucket is None else pad_feed(feed, bucket, self.pad_id)
        with self.lock:  # ORT runs a graph-capturing session one call at a time
            if bucket is None:
                return self.plain.run(feed)
            slot = self.slots.get(bucket)
            if slot is None and len(self.slots) >= self.spec.max_graphs:
                return self.plain.run(feed)
            try:
                if slot is None:
                    slot = _Slot(self.session, bucket, len(self.slots) + 1, self.device, self.output_types)
                outputs = slot.run(self.session, padded)
            except Exception as exc:  # a capture ORT refuses: keep serving without graphs
                log.warning("CUDA graph for %s failed (%s); running without CUDA graphs", bucket, exc)
                self.enabled = False
                return self.plain.run(feed)
            self.slots[bucket] = slot
        return unpad_outputs(outputs, masks)


# --------------------------------------------------------------------------- placement check
def node_placement(
    path: str, providers: list, feed: dict[str, np.ndarray], options: ort.SessionOptions | None = None
) -> dict:
    """Which execution provider ran each node, from one profiled run of the graph at `path`.

    Returns {"nodes": {provider: count}, "cpu_ops": {op: count} (nodes on the CPU provider),
    "memcpy": count of Memcpy nodes (a CPU fallback of compute, which also rules out CUDA graphs),
    "fallback": [ops on the CPU that are not shape arithmetic]}.
    """
    options = options or ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "placement")
        session = ort.InferenceSession(path, options, providers=providers)
        session.run(None, feed)
        trace = session.end_profiling()
        with open(trace) as fh:
            events = json.load(fh)
    return placement_from_trace(events)


def placement_from_trace(events: list[dict]) -> dict:
    nodes: dict[str, int] = {}
    cpu_ops: dict[str, int] = {}
    memcpy = 0
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args or not event["name"].endswith("_kernel_time"):
            continue
        provider, op = args["provider"], args.get("op_name", "?")
        nodes[provider] = nodes.get(provider, 0) + 1
        memcpy += op.startswith("Memcpy")
        if provider == CPU:
            cpu_ops[op] = cpu_ops.get(op, 0) + 1
    fallback = sorted(op for op in cpu_ops if op not in SHAPE_OPS)
    return {"nodes": nodes, "cpu_ops": cpu_ops, "memcpy": memcpy, "fallback": fallback}
