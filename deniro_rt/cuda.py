"""CUDA execution-provider hot path: IO binding with device input buffers reused per shape.

NOT RUN in this project's CI or on the development machine (no GPU there): it is exercised only by
the GPU script (bench/gpu/), see issue 6. The CPU path never imports this module.
"""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from .artifact import FAST_OUTPUTS

# TopK reads k from host memory on every EP, so `top_k` stays a CPU tensor (no device round trip).
HOST_INPUTS = {"top_k"}


class CudaBinding:
    """Runs the fast graph with inputs in device buffers; only the small outputs come back to host.

    Buffers are per thread (a session is shared by threads, an OrtValue being written is not) and
    per shape, so steady-state serving with bucketed shapes allocates nothing.
    """

    def __init__(self, session: ort.InferenceSession, device_id: int = 0):
        self.session = session
        self.device_id = device_id
        self.local = threading.local()

    def _buffers(self) -> dict:
        if not hasattr(self.local, "buffers"):
            self.local.buffers = {}
        return self.local.buffers

    def _device_value(self, name: str, array: np.ndarray) -> ort.OrtValue:
        key = (name, array.shape, array.dtype.str)
        buffers = self._buffers()
        value = buffers.get(key)
        if value is None:
            value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
            buffers[key] = value
        else:
            value.update_inplace(array)  # host -> device copy into the existing buffer
        return value

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, array in feed.items():
            if name in HOST_INPUTS:
                binding.bind_cpu_input(name, array)
            else:
                binding.bind_ortvalue_input(name, self._device_value(name, np.ascontiguousarray(array)))
        for name in FAST_OUTPUTS:
            binding.bind_output(name, "cpu")  # [n, k] top-k rows only: tiny next to [batch, seq, vocab]
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
