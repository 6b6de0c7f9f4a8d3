"""OpenVINO as a candidate of `python -m bench quant` (issue 22, candidate 4): the artifact's fp32 graph,
int8-stored weights folded to fp32 first, run by OpenVINO's CPU plugin in f32 or bf16.

OpenVINO reads the fused ONNX graph (com.microsoft Attention, SkipLayerNormalization, ...) directly.
OpenVinoSession gives it onnxruntime's `run(output_names, feed)`, so every scorer of bench quant (top-1,
top-5, perplexity, batch drift, timing) treats it like an ORT graph. f32 turns off OpenVINO's dynamic
activation quantization (DYNAMIC_QUANTIZATION_GROUP_SIZE 0): with it on, "f32" would not be fp32 compute.
Needs the extra: pip install -e ".[openvino]".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deniro_rt.errors import DeniroError

OV_METHODS = {"openvino-f32": "f32", "openvino-bf16": "bf16"}  # bench quant method -> inference precision


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise DeniroError(
            'the openvino-* methods need OpenVINO: pip install -e ".[openvino]" (or drop them from --methods)'
        ) from exc
    return openvino


class OpenVinoSession:
    """One compiled OpenVINO model behind onnxruntime's InferenceSession.run interface (CPU)."""

    def __init__(self, path: Path, precision: str, threads: int | None = None):
        ov = import_openvino()
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise DeniroError("openvino-bf16: this CPU has no bf16 support (AVX-512 BF16 or AMX); use openvino-f32")
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all cores on it (as an ORT session)
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,  # no int8 activations behind the precision's back
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        # copies: the request's output tensors are overwritten by its next call
        return [np.array(result[self.compiled.output(name)]) for name in output_names or self.output_names]
