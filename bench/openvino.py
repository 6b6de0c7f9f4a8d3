"""OpenVINO as a candidate of `python -m bench quant` (issue 22, candidates 3 and 4): the artifact's fp32 graph
run by OpenVINO's CPU plugin in f32 or bf16, exactly as deniro_rt runs precision="bf16" (deniro_rt/openvino.py:
weights folded to fp32 first; bf16 batches padded to a multiple of MIN_TOKENS tokens), or quantized to static
int8 by NNCF with SmoothQuant (openvino-int8: activation ranges from bench quant's calibration sentences).

ov_session gives it onnxruntime's `run(output_names, feed)` (deniro_rt's OpenVinoSession), so every scorer of
bench quant (top-1, top-5, perplexity, batch drift, timing) treats it like an ORT graph. Needs the extras:
pip install -e ".[openvino]" (".[nncf]" for openvino-int8; both are in dev).
"""

from __future__ import annotations

from pathlib import Path

from deniro_rt.errors import DeniroError
from deniro_rt.openvino import OpenVinoGraph, OpenVinoSession, bf16_min_tokens, fold_weights, import_openvino

# bench quant method -> OpenVINO's inference precision (int8: the FakeQuantize ops NNCF inserts run in int8)
OV_METHODS = {"openvino-f32": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
SMOOTH_QUANT_ALPHA = 0.95  # of 0.5 / 0.95 / off on the shipped model, the closest to fp32 (top-1 90 / 95 / 91 %)


def ov_session(path: Path, precision: str) -> OpenVinoSession:
    """The method's graph as an ORT-like session; the int8 IR is padded like bf16: OpenVINO's int8 kernels depend
    on the length too (drift 8e-3 unpadded)."""
    min_tokens = bf16_min_tokens() if path.suffix == ".xml" else None
    return OpenVinoSession(OpenVinoGraph(path, precision, min_tokens=min_tokens))


def ov_graph(name: str, fp32_graph: Path, out: Path, calibration: list[dict]) -> Path:
    """What an openvino-* method compiles: the fp32 graph itself, or for openvino-int8 its NNCF int8 IR."""
    return nncf_int8(fp32_graph, out / f"{name}.xml", calibration) if name == "openvino-int8" else fp32_graph


def nncf_int8(fp32_graph: Path, dst: Path, calibration: list[dict]) -> Path:
    """Static int8 by NNCF (SmoothQuant on the MatMuls, then activation ranges over the calibration feeds, the
    transformer preset: symmetric weights, asymmetric activations), saved as OpenVINO IR (dst .xml + .bin)."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters as Advanced
        from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters as Smooth
    except ImportError as exc:
        hint = 'pip install "deniro[nncf]"'
        raise DeniroError(f"--methods openvino-int8 quantizes with NNCF, not installed: {hint}") from exc
    ov = import_openvino()
    model = ov.Core().read_model(str(fold_weights(fp32_graph, dst.with_suffix(".onnx"))))
    names = [port.get_any_name() for port in model.inputs]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration, lambda feed: {name: feed[name] for name in names}),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration),
        advanced_parameters=Advanced(smooth_quant_alphas=Smooth(matmul=SMOOTH_QUANT_ALPHA)),
    )
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    dst.with_suffix(".onnx").unlink()
    return dst
