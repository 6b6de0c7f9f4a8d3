"""precision="bf16" on CPU: the artifact's fp32 graph compiled by OpenVINO's CPU plugin in bf16 (issue 22).

Needs the `openvino` extra (pip install "deniro[openvino]") and a CPU with bf16 instructions (AVX-512 BF16
or AMX). What it gives, measured on the shipped model against the fp32 graph on a 2-core AMD EPYC
(docs/precision.md): the graph 1.3-2.3x as fast (1.45-2.2x end to end), top-1
99.8 % on the decisive masks, perplexity +0.01 %. It is the CPU default where bf16_by_default() holds (that kind
of CPU, the extra installed), an opt-in elsewhere.

Two details keep its answers honest:
- The weights are folded to fp32 first (onnxruntime's own constant folding, no extra dependency): read
  as int8 + DequantizeLinear, OpenVINO keeps them compressed and its answers moved by up to 0.12 in log-prob.
- Every batch is padded to a multiple of MIN_TOKENS tokens. OpenVINO's CPU plugin works on the sequence in
  blocks of 16 and handles a partial last block another way: one 23-token text scored one way at 23-31 tokens
  and another (5e-3 in probability) at 32 and more; a 47-token text one way at 47 and another at 48-300. So a
  text's answer depended on the length of the batch it was padded into. Padded to multiples of 16, each of 357
  IMDB texts of 4-263 tokens came out bit for bit the same at every multiple of 16 up to 512 tokens, alone and
  in batches of 7 to 357, on 1 and 2 threads; multiples of 8 changed 33 of them (tests/test_openvino.py).
  That was measured on AVX-512 BF16. A CPU with AMX runs other bf16 kernels (tiles that reduce over 32
  elements), not measured yet: there batches are padded to multiples of 32, as in the first version, which
  tests/test_openvino.py passed on; re-check with that test on an AMX machine before lowering it.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import DeniroError
from .providers import usable_cores

MIN_TOKENS = 16  # bf16 on AVX-512 BF16: every batch fed to OpenVINO is padded to a multiple of this (see above)
AMX_MIN_TOKENS = 32  # the same on a CPU with AMX, or whose flags cannot be read (unmeasured: the safer block)
OUTPUTS = ("topk_logprobs", "topk_ids", "target_logprobs")
INSTALL_HINT = 'pip install "deniro[openvino]"'


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise DeniroError(
            f"precision bf16 on CPU runs on OpenVINO (so do bench quant's openvino-* methods), which is not "
            f"installed: {INSTALL_HINT}"
        ) from exc
    return openvino


def check_bf16(capabilities: list[str]) -> None:
    if "BF16" not in capabilities:
        raise DeniroError(
            f"precision bf16: this CPU has no bf16 instructions (OpenVINO reports {', '.join(capabilities)}); "
            "AVX-512 BF16 or AMX is needed. Use precision='fp32'"
        )


def fold_weights(graph: str | Path, out: Path) -> Path:
    """The graph with its int8-stored weights (DequantizeLinear on constants) folded to fp32, by onnxruntime's
    basic constant folding: standard ONNX and the com.microsoft ops the graph already had, nothing ORT-only."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # fold DequantizeLinear, do not fuse it
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return out


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags as Linux lists them; None where they cannot be read (other systems)."""
    try:
        with open(cpuinfo) as lines:
            flags = next((line for line in lines if line.startswith("flags")), "")
    except OSError:
        return None
    return set(flags.partition(":")[2].split()) or None


def bf16_kernels(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """Which bf16 kernels OpenVINO runs on this CPU, by Linux's flags: "amx", "avx512_bf16", or "unknown"."""
    flags = cpu_flags(cpuinfo) or set()
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "unknown"


def bf16_min_tokens(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """The padding multiple for bf16 on this CPU: MIN_TOKENS where measured (AVX-512 BF16), else AMX_MIN_TOKENS."""
    return MIN_TOKENS if bf16_kernels(cpuinfo) == "avx512_bf16" else AMX_MIN_TOKENS


def bf16_by_default(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether precision=None on CPU may pick bf16 (for an artifact whose bf16 record passed): OpenVINO installed,
    and a CPU whose bf16 kernels are the ones issue 22's gate was measured on (AVX-512 BF16 without AMX: fp32's
    decisive answers, batch-invariant with the 16-token rule). On AMX, or where the flags cannot be read, bf16 is
    an opt-in until measured there."""
    return bf16_kernels(cpuinfo) == "avx512_bf16" and bf16_available()


def bf16_available() -> bool:
    """OpenVINO is installed and reports bf16 on this CPU (AVX-512 BF16 or AMX): precision="bf16" can run."""
    try:
        openvino = import_openvino()
    except DeniroError:  # not installed: fp32, the runtime's own default
        return False
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoGraph:
    """The fast graph compiled by OpenVINO; run(feed) returns OUTPUTS like session.run. Thread-safe: one
    infer request per calling thread."""

    def __init__(
        self,
        graph: str | Path,
        precision: str = "bf16",
        threads: int | None = None,
        pad_id: int = 0,
        max_tokens: int = 512,
        min_tokens: int | None = None,
    ):
        ov = import_openvino()
        core = ov.Core()
        if precision == "bf16":
            check_bf16(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time on all the cores, as an ORT session
            "INFERENCE_NUM_THREADS": threads or usable_cores(),
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,  # no int8 activations behind the precision's back
        }
        with tempfile.TemporaryDirectory(prefix="deniro-ov-") as tmp:
            # OpenVINO IR (.xml: bench quant's NNCF int8) is read as it is; ONNX with its weights folded
            source = graph if Path(graph).suffix == ".xml" else fold_weights(graph, Path(tmp) / "folded.onnx")
            model = core.read_model(str(source))
            self.compiled = core.compile_model(model, "CPU", config)
        self.input_names = tuple(port.get_any_name() for port in self.compiled.inputs)
        self.outputs = {name: self.compiled.output(name) for name in OUTPUTS}
        warm_dtypes(self.compiled)
        # None: bf16's rule for this CPU; f32 is exact at any length (0: no padding)
        self.min_tokens = (bf16_min_tokens() if precision == "bf16" else 0) if min_tokens is None else min_tokens
        self.pad_id, self.max_tokens = pad_id, max_tokens  # max_tokens: the model's position limit
        self._requests = threading.local()

    def run(self, feed: dict[str, np.ndarray], names: tuple[str, ...] = OUTPUTS) -> list[np.ndarray]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        # shared, not copied in and out (0.3-0.4 ms of a 2 ms call at batch 1, measured); the copies below are
        # what keeps the results: the request's output buffers are overwritten by its next call
        feed = floored(feed, self.min_tokens, self.pad_id, self.max_tokens)
        result = request.infer(feed, share_inputs=True, share_outputs=True)
        return [np.array(result[self.outputs[name]]) for name in names]


def warm_dtypes(compiled) -> None:
    """Build pyopenvino's element type -> NumPy dtype table now, in this thread. It is a C++ static built on
    first use, and building it hands the GIL over: a second thread then waits for the static holding the GIL,
    which the first needs back. Every infer starts with that lookup: 8 threads sharing a fresh FillMask deadlocked
    the process in their first calls (3 to 7 processes of 10, OpenVINO 2026.4.1; tests/test_runtime.py)."""
    for port in (*compiled.inputs, *compiled.outputs):
        port.get_element_type().to_dtype()


class OpenVinoSession:
    """An OpenVinoGraph behind onnxruntime's InferenceSession.run(output_names, feed), for code written against
    ORT sessions (export's validation, bench quant)."""

    def __init__(self, graph: OpenVinoGraph):
        self.graph = graph

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.graph.run(feed, tuple(output_names or OUTPUTS))


def floored(feed: dict[str, np.ndarray], min_tokens: int, pad_id: int, max_tokens: int = 512) -> dict:
    """feed padded to a multiple of min_tokens tokens (pad ids, attention 0; 0: as it is) but not past the
    model's max_tokens positions, its flat mask index moved to match."""
    ids = feed["input_ids"]  # [batch, seq]
    batch, seq = ids.shape
    padded = max(seq, min(-(-seq // min_tokens) * min_tokens, max_tokens)) if min_tokens else seq
    if padded == seq:
        return feed
    input_ids = np.full((batch, padded), pad_id, np.int64)  # [batch, padded]
    input_ids[:, :seq] = ids
    attention = np.zeros((batch, padded), np.int64)  # [batch, padded]
    attention[:, :seq] = feed["attention_mask"]
    rows, positions = np.divmod(feed["mask_index"], seq)  # [n] each
    return {**feed, "input_ids": input_ids, "attention_mask": attention, "mask_index": rows * padded + positions}
