"""OpenVINO as a candidate of `python -m bench quant` (issue 22, candidate 4): the artifact's fp32 graph run
by OpenVINO's CPU plugin in f32 or bf16, exactly as deniro_rt runs precision="bf16" (deniro_rt/openvino.py:
weights folded to fp32 first; bf16 batches padded to a multiple of 32 tokens).

OpenVinoSession gives it onnxruntime's `run(output_names, feed)`, so every scorer of bench quant (top-1,
top-5, perplexity, batch drift, timing) treats it like an ORT graph. Needs the extra: pip install -e ".[openvino]".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deniro_rt.openvino import OUTPUTS, OpenVinoGraph

OV_METHODS = {"openvino-f32": "f32", "openvino-bf16": "bf16"}  # bench quant method -> inference precision


class OpenVinoSession:
    """deniro_rt's OpenVinoGraph behind onnxruntime's InferenceSession.run interface."""

    def __init__(self, path: Path, precision: str):
        self.graph = OpenVinoGraph(path, precision)

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.graph.run(feed, tuple(output_names or OUTPUTS))
