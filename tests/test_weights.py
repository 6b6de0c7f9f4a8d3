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
    mixed_8bit_rows,
    mixed_table,
    round_rows,
    round_weights,
    store_int8,
)

SMALL = {"sentences": 48, "random_sequences": 8, "perplexity_chunks": 4}


def int8_config(model_dir, imdb_dir, output, **overrides) -> ExportConfig:
    """--weights int8 export of the tiny model, fp32 graphs only, small validation."""
    settings = {"precision": ("fp32",), "weights": "int8", "dataset": str(imdb_dir), **SMALL, **overrides}
    return ExportConfig(onnx=True, model=str(model_dir), output=str(output), **settings)


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, tiny_model_dir, imdb_dir):
    return main(int8_config(tiny_model_dir, imdb_dir, tmp_path_factory.mktemp("int8_weights"), full_graph=True))


@pytest.fixture(scope="module")
def mixed_artifact(tmp_path_factory, tiny_model_dir, imdb_dir):
    folder = tmp_path_factory.mktemp("mixed_table")
    return main(int8_config(tiny_model_dir, imdb_dir, folder, full_graph=False, table_8bit_rows=300))


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


@pytest.mark.parametrize("artifact", ["int8_artifact", "mixed_artifact"])
def test_bench_parity_compares_the_rounded_model(artifact, request, imdb_dir, tmp_path):
    """bench's PyTorch side rounds the checkpoint like the export did (a mixed table: its 8-bit rows read
    from the graph): fp32 parity holds (it would not against the unrounded checkpoint: rounding moved the
    logits, see the tests above)."""
    import json

    from bench.__main__ import run

    int8_artifact = request.getfixturevalue(artifact)
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
            "--precisions",
            "fp32",  # what rounding must keep exact; bf16 may join the default list on a bf16 CPU
            "--out",
            str(tmp_path),
        ]
    )
    [fp32] = json.loads((tmp_path / "parity.json").read_text())["parity"]
    assert code == 0 and fp32["passed"], fp32["failures"]
    assert fp32["chunks"]["rel_diff"] <= 1e-4 and fp32["sentences"]["top5_identical"] >= 0.999


# --------------------------------------------------------------------------- mixed 8/4-bit table (issue 23)
def one_lookup(table: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("Gather", ["table", "ids"], ["rows"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, table.shape[1]])],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mixed_table_is_stored_bit_exact_in_less_space_and_folds_to_one_table_at_load(tmp_path):
    weight = np.random.default_rng(0).normal(size=(600, 48)).astype(np.float32)
    rows_8bit = np.arange(0, 600, 6)  # 100 rows keep 8 bits
    table = mixed_table(weight, round_rows(weight), rows_8bit)
    assert np.array_equal(table[rows_8bit], round_rows(weight)[rows_8bit])
    others = np.setdiff1d(np.arange(600), rows_8bit)
    levels = table[others] / grid_scales(np.abs(table[others]).max(axis=1), 7)[:, None]
    assert np.array_equal(levels, np.rint(levels)) and np.abs(levels).max() == 7  # 4-bit rows: -7..7
    path = tmp_path / "lookup.onnx"
    onnx.save(one_lookup(table), str(path))
    assert store_int8(path)["int8_matrices"] == 0  # not told which rows are 8-bit: left in fp32
    stored = store_int8(path, rows_8bit)
    assert stored["int8_matrices"] == 1 and stored["mixed_tables"] == 1
    assert path.stat().st_size < 0.8 * (600 * 48 + 600 * 4)  # vs all 8-bit: 100 rows of 48 bytes + 500 of 24
    options = session_options(CPU, 1, "fp32")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    got = ort.InferenceSession(str(path), options, providers=[CPU]).run(None, {"ids": np.arange(600)})[0]
    assert np.array_equal(got, table)
    assert [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node] == ["Gather"]
    assert np.array_equal(mixed_8bit_rows(onnx.load(str(path))), rows_8bit)
    restored = float_weights(onnx.load(str(path)))  # back to one fp32 initializer, for requantizers
    assert [n.op_type for n in restored.graph.node] == ["Gather"] and len(restored.graph.initializer) == 1
    assert np.array_equal(numpy_helper.to_array(restored.graph.initializer[0]), table)


def test_mixed_table_artifact_is_validated_smaller_and_equals_the_rounded_model(
    mixed_artifact, int8_artifact, tiny_model_dir
):
    from transformers import AutoModelForMaskedLM

    manifest = load_manifest(mixed_artifact)
    rounding = manifest.raw["weight_rounding"]
    assert rounding["passed"] and rounding["scheme"].endswith("300 most frequent pieces 8-bit, the rest 4-bit")
    assert manifest.raw["validation"]["fp32"]["passed"] and manifest.raw["export_config"]["table_8bit_rows"] == 300
    fast = mixed_artifact / FAST_GRAPHS["fp32"]
    table_bytes = [
        sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(folder / FAST_GRAPHS["fp32"])).graph.initializer)
        for folder in (mixed_artifact, int8_artifact)
    ]
    assert table_bytes[0] < table_bytes[1] - 2000  # 300 rows at 16 bytes instead of 32, less the order's 2,400
    rows_8bit = mixed_8bit_rows(onnx.load(str(fast)))
    assert len(rows_8bit) == 300 and {0, 1, 2, 3, 4} <= set(rows_8bit.tolist())  # the special tokens lead
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    round_weights(model, rows_8bit)
    text = "This movie was [MASK] and the acting was great."
    tokenizer = FillMask(mixed_artifact, device="cpu", precision="fp32")
    got = tokenizer.fill(text, top_k=5)
    enc = tokenizer.tokenizer.encode(text)
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=ids).logits[0, enc.ids.index(tokenizer.mask_id)], -1)
    top = torch.topk(expected, 5)
    assert [r["token"] for r in got] == top.indices.tolist()
    assert np.allclose([r["score"] for r in got], top.values.exp().numpy(), rtol=1e-5)


def test_table_8bit_rows_needs_int8_weights_and_fewer_rows_than_the_vocabulary(tiny_model_dir, imdb_dir, tmp_path):
    from deniro_rt.errors import DeniroError
    from export.config import check_config

    base = {"onnx": True, "model": str(tiny_model_dir), "dataset": str(imdb_dir), **SMALL}
    with pytest.raises(DeniroError, match=r"^--table-8bit-rows 100: pass a number of rows >= 0 together with "):
        check_config(ExportConfig(output=str(tmp_path / "a"), table_8bit_rows=100, **base))
    with pytest.raises(DeniroError, match=r"^--table-8bit-rows 100000 keeps every one of the \d+ rows at 8 bits"):
        main(ExportConfig(output=str(tmp_path / "b"), weights="int8", table_8bit_rows=100000, **base))
    assert not (tmp_path / "b").exists()  # nothing written


def test_an_odd_width_table_is_refused_and_nothing_written(tiny_tokenizer, imdb_dir, tmp_path):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from deniro_rt.errors import DeniroError

    shape = {"dim": 33, "n_layers": 1, "n_heads": 3, "hidden_dim": 64, "max_position_embeddings": 128}
    model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tiny_tokenizer), **shape))
    model.save_pretrained(tmp_path / "odd")
    tiny_tokenizer.save_pretrained(tmp_path / "odd")
    config = int8_config(tmp_path / "odd", imdb_dir, tmp_path / "out", table_8bit_rows=100)
    with pytest.raises(DeniroError, match=r"^--table-8bit-rows stores two 4-bit values a byte and this model's "):
        main(config)
    assert not (tmp_path / "out").exists()


def test_a_mixed_table_that_costs_too_much_perplexity_writes_nothing(tiny_model_dir, imdb_dir, tmp_path, monkeypatch):
    """On the random tiny model, 4-bit rows beyond its 100 most frequent pieces move perplexity by 1.1-1.3 %
    (the tiny vocabulary is retrained each session, so that sits on the real 1 % gate: a CI run passed it);
    the perplexity gate is set to 0.1 % here so that the failure does not depend on the draw."""
    import export.weights
    from export.validate import ValidationFailed

    gate = {**export.weights.ROUNDING_THRESHOLDS, "perplexity_rel_diff": ("<=", 0.001)}
    monkeypatch.setattr(export.weights, "ROUNDING_THRESHOLDS", gate)
    config = int8_config(tiny_model_dir, imdb_dir, tmp_path / "out", precision=(), table_8bit_rows=100)
    expected = (
        r"^rounding the weights to int8 with 100 table rows at 8 bits and the rest at 4 changed the model too "
        r"much, nothing written: perplexity_rel_diff [0-9.]+ \(needs <= 0.001\); export with a larger "
        r"--table-8bit-rows, or without it$"
    )
    with pytest.raises(ValidationFailed, match=expected):
        main(config)
    assert not (tmp_path / "out").exists()
