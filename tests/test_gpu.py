"""CUDA execution provider: run with `pytest -m gpu` on a GPU box with onnxruntime-gpu (never run yet)."""
import numpy as np
import onnxruntime as ort
import pytest

from deniro_rt import FillMask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a GPU")]

TEXTS = ["This is a great [MASK]!", "The acting was [MASK] and the [MASK] was too long."] * 40


def test_cuda_fp32_matches_cpu_fp32():
    cpu = FillMask(device="cpu", precision="fp32").fill(TEXTS, top_k=5, batch_size=16)
    cuda_runtime = FillMask(device="cuda", precision="fp32")
    assert cuda_runtime.provider == "CUDAExecutionProvider"
    cuda = cuda_runtime.fill(TEXTS, top_k=5, batch_size=16)
    flat = lambda results: [p for r in results for m in (r if isinstance(r[0], list) else [r]) for p in m]
    a, b = flat(cpu), flat(cuda)
    assert [p["token"] for p in a] == [p["token"] for p in b]
    np.testing.assert_allclose([p["score"] for p in a], [p["score"] for p in b], atol=1e-4)
