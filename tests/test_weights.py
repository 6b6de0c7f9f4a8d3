"""export --weights int8: weights rounded in PyTorch, stored as int8 in the graph bit for bit, folded at load."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deniro_rt import FillMask
from deniro_rt.artifact import FAST_GRAPHS, FULL_GRAPH, load_manifest
from deniro_rt.providers import CPU, session_options
from export.config import ExportConfig
from export.pipeline import main
from export.weights import (
    float_weights,
    grid_scales,
    int8_on_grid,
    round_weights,
    store_int8,
)

SMALL = {"sentences": 48, "random_sequences": 8, "perplexity_chunks": 4}


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, tiny_model_dir, imdb_dir):
    folder = tmp_path_factory.mktemp("int8_weights")
    return main(
        ExportConfig(
            onnx=True,
            model=str(tiny_model_dir),
            output=str(folder),
            precision=("fp32",),
            full_graph=True,
            weights="int8",
            dataset=str(imdb_dir),
            **SMALL,
        )
    )


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def rounded_tiny(tiny_model_dir):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    return model, round_weights(model)


def test_rounding_puts_every_matrix_on_an_exact_int8_grid(tiny_model_dir):
    model, names = rounded_tiny(tiny_model_dir)
    matrices = [n for n, p in model.named_parameters() if p.dim() == 2]
    assert names == matrices  # embeddings, q/k/v/out, FFN, vocab_transform (the projector is tied)
    for _name, param in model.named_parameters():
        if param.dim() != 2:
            continue
        weight = param.detach().numpy()  # [out, in]: one scale per row
        q, scale, axis = int8_on_grid(weight)
        assert axis == 0 and np.abs(q).max() == 127
        assert np.array_equal(q.astype(np.float32) * scale[:, None], weight)
        assert int8_on_grid(np.ascontiguousarray(weight.T))[2] == 1  # as a MatMul weight [in, out]


def test_grid_scales_keep_17_bits_and_zero_rows_stay_zero():
    scales = grid_scales(np.array([0.0, 1.0, 3.0e-3, 123.456], np.float32))
    mantissa, _ = np.frexp(scales)
    assert np.all(mantissa * 2**17 == np.round(mantissa * 2**17))
    assert scales[0] == 1.0  # an all-zero row: any scale gives q = 0
    assert np.allclose(scales[1:], np.array([1.0, 3.0e-3, 123.456]) / 127, rtol=2**-16)


def one_matmul(weight: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_store_int8_is_bit_exact_and_leaves_off_grid_weights_alone(tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 64, bias=False)
    round_weights(linear)
    on_grid = np.ascontiguousarray(linear.weight.detach().numpy().T)  # [in, out]
    x = np.random.default_rng(0).normal(size=(5, 48)).astype(np.float32)

    def run(path):  # ORT against ORT: numpy's BLAS may sum in another order than MLAS (it did on an AMD EPYC)
        return ort.InferenceSession(str(path), session_options(CPU, 1, "fp32"), providers=[CPU]).run(None, {"x": x})[0]

    for weight, stored in ((on_grid, 1), (on_grid + np.float32(1e-3), 0)):
        path = tmp_path / f"m{stored}.onnx"
        onnx.save(one_matmul(weight), str(path))
        unstored = run(path)  # [5, 64] the fp32 initializer as it was
        assert store_int8(path)["int8_matrices"] == stored
        ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        assert ops["DequantizeLinear"] == stored
        assert np.array_equal(run(path), unstored) and np.allclose(unstored, x @ weight, atol=1e-5)
        restored = float_weights(onnx.load(str(path)))  # back to an fp32 initializer, for requantizers
        assert [n.op_type for n in restored.graph.node] == ["MatMul"]
        assert np.array_equal(numpy_helper.to_array(restored.graph.initializer[0]), weight)


def test_int8_artifact_is_small_validated_and_equals_the_rounded_model(int8_artifact, tiny_model_dir, tiny):
    manifest = load_manifest(int8_artifact)
    rounding = manifest.raw["weight_rounding"]
    assert rounding["passed"] and rounding["matrices"] == 2 * 6 + 3
    assert rounding["metrics"]["perplexity_rel_diff"] <= 0.01
    assert all(v["passed"] for v in manifest.raw["validation"].values())
    fp32 = manifest.raw["validation"]["fp32"]["metrics"]
    assert fp32["max_rel_logit_diff"] <= 1e-5 and fp32["top5_identical"] == 1.0  # vs the ROUNDED model
    for name in (FAST_GRAPHS["fp32"], FULL_GRAPH):
        ops = Counter(n.op_type for n in onnx.load(str(int8_artifact / name)).graph.node)
        assert ops["DequantizeLinear"] >= 9, (name, ops)
    rounded, _ = rounded_tiny(tiny_model_dir)
    original, tokenizer = tiny
    text = "This movie was [MASK] and the acting was great."
    enc = tokenizer(text, return_tensors="pt")
    at_mask = enc["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    with torch.no_grad():
        expected = torch.log_softmax(rounded(**enc).logits[0, at_mask], -1)
        unrounded = torch.log_softmax(original(**enc).logits[0, at_mask], -1)
    assert not torch.equal(expected, unrounded)  # rounding did change the model
    got = FillMask(int8_artifact, device="cpu", precision="fp32").fill(text, top_k=5)
    top = torch.topk(expected, 5)
    assert [r["token"] for r in got] == top.indices.tolist()
    assert np.allclose([r["score"] for r in got], top.values.exp().numpy(), rtol=1e-5)


def test_runtime_folds_the_int8_weights_at_load(int8_artifact, tmp_path):
    options = session_options(CPU, 1, "fp32")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_artifact / FAST_GRAPHS["fp32"]), options, providers=[CPU])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["DequantizeLinear"] == 0 and ops["MatMulNBits"] == 0  # fp32 compute on folded weights
    with pytest.raises(RuntimeError, match="does not have configuration"):  # int8 graphs keep their QDQ fusions
        session_options(CPU, 1, "int8").get_session_config_entry("session.disable_quant_qdq")


def test_int8_weights_refuse_fp16(tiny_model_dir, tmp_path):
    from deniro_rt.errors import DeniroError
    from export.config import check_config

    with pytest.raises(DeniroError, match="--weights int8 stores fp32 graphs compactly for CPU apps"):
        check_config(
            ExportConfig(
                onnx=True,
                model=str(tiny_model_dir),
                output=str(tmp_path / "o"),
                device="cuda",
                precision=("fp32", "fp16"),
                weights="int8",
            )
        )


def test_bench_parity_compares_the_rounded_model(int8_artifact, imdb_dir, tmp_path):
    """bench's PyTorch side rounds the checkpoint like the export did: fp32 parity holds (it would not
    against the unrounded checkpoint: rounding moved the logits, see the test above)."""
    import json

    from bench.__main__ import run

    code = run(
        [
            "parity",
            "--device",
            "cpu",
            "--model",
            str(int8_artifact),
            "--dataset",
            str(imdb_dir),
            "--parity-texts",
            "40",
            "--parity-sentences",
            "32",
            "--out",
            str(tmp_path),
        ]
    )
    [fp32] = json.loads((tmp_path / "parity.json").read_text())["parity"]
    assert code == 0 and fp32["passed"], fp32["failures"]
    assert fp32["chunks"]["rel_diff"] <= 1e-4 and fp32["sentences"]["top5_identical"] >= 0.999
