"""python -m export: graphs equal PyTorch, the artifact matches the deniro_rt contract, bad input is refused."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deniro_rt import FillMask
from deniro_rt.artifact import (
    FAST_GRAPHS,
    FAST_INPUTS,
    FAST_OUTPUTS,
    FORMAT,
    FORMAT_VERSION,
    FULL_GRAPH,
    MANIFEST,
    load_manifest,
    sha256_file,
    verify_file,
)
from deniro_rt.errors import EXIT_USAGE, ArtifactError, DeniroError
from deniro_rt.models import DEFAULT_MODEL_DIR
from deniro_rt.openvino import bf16_available
from export import optimize, validate
from export.__main__ import EXIT_VALIDATION, build_parser, run
from export.config import INT8_METHODS, ExportConfig, split_precisions

CPU = ["CPUExecutionProvider"]
SMALL_VALIDATION = ["--sentences", "24", "--random-sequences", "8", "--perplexity-chunks", "4"]
MANIFEST_KEYS = {
    "format",
    "format_version",
    "graphs",
    "full_graph",
    "files",
    "vocab_size",
    "max_positions",
    "mask_token",
    "mask_token_id",
    "pad_token_id",
    "top_k_max",
    "opset",
    "fused_ops",
    "validation",
    "source",
    "export_config",
    "versions",
}


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


SENTENCES = [
    "This movie was [MASK] and the acting was great.",
    "I [MASK] it.",
    "The plot made no sense at all, but the [MASK] was beautiful and the music [MASK] too.",
]


def padded_batch(tokenizer):
    """Three sentences of different lengths (so two rows are padded) and their [MASK] positions."""
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)  # [batch, seq]
    mask_index = np.flatnonzero(ids.ravel() == tokenizer.mask_token_id).astype(np.int64)  # [n]
    assert mask.min() == 0 and len(mask_index) == 4
    return ids, mask, mask_index


def torch_mask_logprobs(model, ids, mask, mask_index) -> torch.Tensor:
    """transformers' own forward, log-softmax at the mask rows: [n, vocab]."""
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1])[torch.from_numpy(mask_index)], dim=-1)


def run_fast(path: Path, ids, mask, mask_index, target_ids, k: int):
    session = ort.InferenceSession(str(path), providers=CPU)
    return session.run(
        list(FAST_OUTPUTS),
        {
            "input_ids": ids,
            "attention_mask": mask,
            "mask_index": mask_index,
            "target_ids": target_ids,
            "top_k": np.array([k], np.int64),
        },
    )


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """run(argv) -> (exit code, stderr lines)."""
    code = run(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_error(lines: list[str], *needles: str) -> None:
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for needle in needles:
        assert needle in errors[0], errors[0]


# --------------------------------------------------------------------------- graphs vs PyTorch
def test_full_graph_logits_equal_transformers(tiny_artifact, tiny):
    model, tokenizer = tiny
    ids, mask, _ = padded_batch(tokenizer)
    session = ort.InferenceSession(str(tiny_artifact / FULL_GRAPH), providers=CPU)
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]  # [batch, seq, vocab]
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    valid = mask.astype(bool)  # padded positions are not defined outputs
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits[valid], expected[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_fast_graph_topk_equals_torch_topk(tiny_artifact, tiny, k):
    model, tokenizer = tiny
    ids, mask, mask_index = padded_batch(tokenizer)
    target_ids = np.zeros((len(mask_index), 1), np.int64)
    topk_logprobs, topk_ids, _ = run_fast(tiny_artifact / FAST_GRAPHS["fp32"], ids, mask, mask_index, target_ids, k)
    expected = torch.topk(torch_mask_logprobs(model, ids, mask, mask_index), k, dim=-1)
    assert topk_ids.shape == (len(mask_index), k)  # k is a runtime input, not baked in at trace time
    np.testing.assert_array_equal(topk_ids, expected.indices.numpy())
    np.testing.assert_allclose(topk_logprobs, expected.values.numpy(), atol=1e-4, rtol=0)


def test_fast_graph_target_logprobs_equal_torch(tiny_artifact, tiny):
    model, tokenizer = tiny
    ids, mask, mask_index = padded_batch(tokenizer)
    vocab = model.config.vocab_size
    target_ids = np.random.default_rng(0).integers(0, vocab, size=(len(mask_index), 6)).astype(np.int64)
    _, _, target_logprobs = run_fast(tiny_artifact / FAST_GRAPHS["fp32"], ids, mask, mask_index, target_ids, 5)
    expected = torch_mask_logprobs(model, ids, mask, mask_index).gather(1, torch.from_numpy(target_ids))
    assert target_logprobs.shape == target_ids.shape
    np.testing.assert_allclose(target_logprobs, expected.numpy(), atol=1e-4, rtol=0)


def test_int8_graph_is_quantized_and_agrees_at_top1(tiny_artifact, tiny):
    model, tokenizer = tiny
    ids, mask, mask_index = padded_batch(tokenizer)
    ops = Counter(n.op_type for n in onnx.load(str(tiny_artifact / FAST_GRAPHS["int8"])).graph.node)
    # static QDQ: every encoder MatMul (QKV, out, lin1, lin2 per layer) reads a fixed-scale quantized input
    assert ops["MultiHeadAttention"] == 2 and ops["QuantizeLinear"] == 4 * 2
    assert "DynamicQuantizeLinear" not in ops and "Attention" not in ops
    _, topk_ids, _ = run_fast(
        tiny_artifact / FAST_GRAPHS["int8"], ids, mask, mask_index, np.zeros((len(mask_index), 1), np.int64), 1
    )
    expected = torch_mask_logprobs(model, ids, mask, mask_index).argmax(-1).numpy()
    np.testing.assert_array_equal(topk_ids[:, 0], expected)


def test_optimum_loads_full_graph(tiny_artifact, tiny):
    from optimum.onnxruntime import ORTModelForMaskedLM

    model, tokenizer = tiny
    ids, mask, _ = padded_batch(tokenizer)
    ort_model = ORTModelForMaskedLM.from_pretrained(tiny_artifact, file_name=FULL_GRAPH)
    with torch.no_grad():
        got = ort_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    valid = torch.from_numpy(mask).bool()
    torch.testing.assert_close(torch.as_tensor(got)[valid], expected[valid], atol=1e-4, rtol=0)


def test_fast_graph_keeps_the_contract_and_never_builds_a_vocab_per_position_tensor(tiny_artifact):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    vocab = load_manifest(tiny_artifact).vocab_size
    for _precision, name in FAST_GRAPHS.items():
        if not (tiny_artifact / name).exists():
            continue
        graph = onnx.load(str(tiny_artifact / name)).graph
        assert [i.name for i in graph.input] == list(FAST_INPUTS)
        assert [o.name for o in graph.output] == list(FAST_OUTPUTS)
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
        assert [o.type.tensor_type.elem_type for o in graph.output] == [
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.INT64,
            onnx.TensorProto.FLOAT,
        ]
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert dims == {
            "input_ids": ["batch", "seq"],
            "attention_mask": ["batch", "seq"],
            "mask_index": ["n"],
            "target_ids": ["n", "t"],
            "top_k": [1],
        }

    def vocab_tensors(path: Path) -> list[list]:
        inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True)
        shapes = [
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.output]
        ]
        return [s for s in shapes if len(s) >= 3 and s[-1] == vocab]

    assert vocab_tensors(tiny_artifact / FULL_GRAPH)  # the check sees [batch, seq, vocab] where it exists
    assert vocab_tensors(tiny_artifact / FAST_GRAPHS["fp32"]) == []


def test_fast_wrapper_equals_transformers_forward(tiny):
    """The traced module itself (before ONNX) computes what transformers computes."""
    from export.model import FastFillMask

    model, tokenizer = tiny
    ids, mask, mask_index = padded_batch(tokenizer)
    target = torch.tensor([[1, 2]] * len(mask_index))
    with torch.no_grad():
        values, indices, target_lp = FastFillMask(model)(
            torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(mask_index), target, torch.tensor([4])
        )
    expected = torch_mask_logprobs(model, ids, mask, mask_index)
    torch.testing.assert_close(values, torch.topk(expected, 4).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(target_lp, expected.gather(1, target), atol=1e-5, rtol=0)


def test_fp16_graph_keeps_fp32_io_and_agrees(tmp_path, tiny_model_dir, imdb_dir):
    """fp16 cannot be exported on CPU (CUDA only), but its builder can be checked here: onnxruntime's
    CPU provider runs the fp16 graph, slowly."""
    from export.graphs import export_fast
    from export.model import load_source

    source = load_source(str(tiny_model_dir), None, "sdpa")
    export_fast(source.model, tmp_path / "raw.onnx", 17)
    counts = optimize.build_graph(
        "fp16", tmp_path / "raw.onnx", tmp_path / "fp16.onnx", optimize.Arch.of(source.model.config), True, True
    )
    assert counts["Attention"] == source.model.config.n_layers
    proto = onnx.load(str(tmp_path / "fp16.onnx"))
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }
    assert {i.data_type for i in proto.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    texts, origin = validate.load_texts(str(imdb_dir), "test", "text")
    cfg = source.model.config
    spec = validate.ValidationSpec(
        cfg.vocab_size, cfg.max_position_embeddings, sentences=64, random_sequences=16, perplexity_chunks=4
    )
    data = validate.build_validation_set(source.tokenizer, texts, origin, spec)
    metrics = validate.score_fast_graph(
        validate.session_for(tmp_path / "fp16.onnx", CPU), data, validate.torch_reference(source.model, data)
    )
    assert validate.check(metrics, validate.THRESHOLDS["fp16"]) == [], metrics


# --------------------------------------------------------------------------- the artifact folder
def test_manifest_describes_the_folder(tiny_artifact, tiny_model_dir):
    manifest = load_manifest(tiny_artifact)
    raw = manifest.raw
    assert MANIFEST_KEYS <= set(raw)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert manifest.graphs == {"fp32": FAST_GRAPHS["fp32"], "int8": FAST_GRAPHS["int8"]}
    assert raw["full_graph"] == FULL_GRAPH
    on_disk = {p.name for p in tiny_artifact.iterdir()} - {MANIFEST, "README.md"}  # the card: not hashed
    assert set(manifest.files) == on_disk
    assert {"tokenizer.json", "config.json", FULL_GRAPH} <= on_disk
    for name in manifest.files:
        verify_file(manifest, name)
    assert manifest.vocab_size == json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    assert (manifest.mask_token, manifest.max_positions) == ("[MASK]", 128)
    assert raw["source"]["sha256"] == sha256_file(tiny_model_dir / "model.safetensors")
    assert raw["export_config"]["model"] == str(tiny_model_dir)
    assert raw["opset"] == 17
    n_layers = 2
    assert raw["fused_ops"]["fp32"]["Attention"] == n_layers
    assert raw["fused_ops"]["fp32"]["SkipLayerNormalization"] == 2 * n_layers
    assert raw["fused_ops"]["fp32"]["EmbedLayerNormalization"] == 1
    assert raw["fused_ops"]["int8"]["MultiHeadAttention"] == n_layers
    assert raw["fused_ops"]["int8"]["QuantizeLinear"] == 4 * n_layers
    assert raw["export_config"]["int8_method"] == "static-percentile"
    for precision, bound in (("fp32", 1e-5), ("int8", 1e-4)):
        metrics = raw["validation"][precision]["metrics"]
        assert metrics["batch_drift"] <= bound and metrics["batch_topk_mismatches"] == 0, metrics
    bf16 = {"bf16"} if bf16_available() else set()  # export/bf16.py's record, where bf16 runs
    assert {"fp32", "int8", "full_graph"} | bf16 == set(raw["validation"])
    assert all(v["passed"] for v in raw["validation"].values())
    assert raw["validation"]["fp32"]["metrics"]["top5_identical"] >= 0.999
    assert {"torch", "transformers", "onnxruntime", "onnx"} <= {k for k, v in raw["versions"].items() if v}


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupted_graph_is_refused(tiny_artifact, tmp_path):
    folder = copy_artifact(tiny_artifact, tmp_path / "art")
    path = folder / FAST_GRAPHS["fp32"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = load_manifest(folder)
    verify_file(manifest, FAST_GRAPHS["int8"])  # untouched files still pass
    with pytest.raises(ArtifactError, match="corrupted"):
        verify_file(manifest, FAST_GRAPHS["fp32"])


def test_mismatched_manifest_is_refused(tiny_artifact, tmp_path):
    folder = copy_artifact(tiny_artifact, tmp_path / "art")
    raw = json.loads((folder / MANIFEST).read_text())

    def rewrite(**changes) -> None:
        (folder / MANIFEST).write_text(json.dumps({**raw, **changes}))

    rewrite(format_version=FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match="format_version"):
        load_manifest(folder)
    rewrite(files={**raw["files"], "tokenizer.json": "0" * 64})
    with pytest.raises(ArtifactError, match="corrupted"):
        verify_file(load_manifest(folder), "tokenizer.json")
    rewrite(files={k: v for k, v in raw["files"].items() if k != FAST_GRAPHS["fp32"]})
    with pytest.raises(ArtifactError, match="not listed"):
        verify_file(load_manifest(folder), FAST_GRAPHS["fp32"])


# --------------------------------------------------------------------------- the CLI
def test_failed_validation_leaves_no_output(tiny_model_dir, imdb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(validate.THRESHOLDS["fp32"], "top5_identical", (">=", 1.01))  # impossible
    out = tmp_path / "out"
    code, lines = cli(
        [
            "--onnx",
            "--model",
            str(tiny_model_dir),
            "--output",
            str(out),
            "--precision",
            "fp32",
            "--no-full-graph",
            "--dataset",
            str(imdb_dir),
            *SMALL_VALIDATION,
        ],
        capsys,
    )
    assert code == EXIT_VALIDATION
    assert_one_error(lines, "validation failed", "top5_identical 1 (needs >= 1.01)")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temp folder is left behind


def test_unfused_attention_fails_loudly_unless_no_fuse(tiny_model_dir, tmp_path, monkeypatch, capsys):
    real = optimize.fusion_options

    def no_attention():
        options = real()
        options.enable_attention = False
        return options

    monkeypatch.setattr(optimize, "fusion_options", no_attention)
    base = ["--onnx", "--model", str(tiny_model_dir), "--precision", "fp32", "--no-full-graph", "--no-validate"]
    code, lines = cli([*base, "--output", str(tmp_path / "fused")], capsys)
    assert code == EXIT_USAGE
    assert_one_error(lines, "fused 0 of 2 attention layers", "--no-fuse")
    assert not (tmp_path / "fused").exists()
    code, _ = cli([*base, "--output", str(tmp_path / "unfused"), "--no-fuse"], capsys)
    assert code == 0
    ops = {n.op_type for n in onnx.load(str(tmp_path / "unfused" / FAST_GRAPHS["fp32"])).graph.node}
    assert "Attention" not in ops and "Softmax" in ops


def test_overwrite_and_random_id_fallback(tiny_model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    argv = [
        "--onnx",
        "--model",
        str(tiny_model_dir),
        "--output",
        str(out),
        "--precision",
        "fp32,int8",
        "--no-full-graph",
        "--dataset",
        str(tmp_path / "no-splits"),  # a folder without test.parquet: random ids stand in
        *SMALL_VALIDATION,
    ]
    (tmp_path / "no-splits").mkdir()
    code, lines = cli(argv, capsys)
    assert code == EXIT_USAGE
    assert lines[-1] == f"error: --output {out} is not empty; pass --overwrite or another --output"  # files.py's
    assert_one_error(lines)
    assert (out / "stale.txt").exists()
    with caplog.at_level("WARNING"):
        assert run([*argv, "--overwrite"]) == 0
    assert "falling back to random token ids" in caplog.text
    assert not (out / "stale.txt").exists()
    raw = load_manifest(out).raw
    assert raw["full_graph"] is None and not (out / FULL_GRAPH).exists()
    assert raw["validation"]["int8"]["passed"] and raw["validation"]["int8"]["source"].startswith("random ids")


def test_a_local_dataset_that_is_missing_or_damaged_is_refused_not_replaced_by_random_ids(
    tiny_model_dir, imdb_dir, tmp_path, capsys
):
    """Random ids stand in for a split the folder lacks (or a hub id offline); a mistyped folder or a damaged
    split file validated on random ids with one warning, and the export passed."""
    base = ["--onnx", "--model", str(tiny_model_dir), "--no-full-graph", *SMALL_VALIDATION]
    out = tmp_path / "out"
    code, lines = cli([*base, "--output", str(out), "--dataset", str(tmp_path / "typo")], capsys)
    assert code == EXIT_USAGE and not out.exists()
    assert_one_error(lines, f"--dataset {tmp_path / 'typo'}: no such folder; pass a folder of <split>.parquet files")
    damaged = shutil.copytree(imdb_dir, tmp_path / "damaged")
    (damaged / "test.parquet").write_bytes(b"not parquet")
    code, lines = cli([*base, "--output", str(out), "--dataset", str(damaged)], capsys)
    assert code != 0 and not out.exists()
    assert_one_error(lines, f"dataset file {damaged / 'test.parquet'} is not readable as parquet")


def test_an_output_holding_the_dataset_is_refused(tiny_model_dir, imdb_dir, tmp_path, capsys):
    """--output the --dataset folder with --overwrite deleted the reviews the export validated on."""
    data = shutil.copytree(imdb_dir, tmp_path / "data")
    before = sorted(p.name for p in data.iterdir())
    argv = ["--onnx", "--model", str(tiny_model_dir), "--output", str(data), "--overwrite", "--dataset", str(data)]
    code, lines = cli([*argv, *SMALL_VALIDATION], capsys)
    assert code == EXIT_USAGE and lines == [
        f"error: --output {data} is or holds --dataset {data}, which the new output would replace; "
        "pass another --output"
    ]
    assert sorted(p.name for p in data.iterdir()) == before


def test_ctrl_c_while_transformers_imports_is_one_line(tiny_model_dir, tmp_path, ctrl_c_while_importing):
    """transformers and export.pipeline (torch, onnx: about 6 s on 2 cores) were imported before run_main's try:
    Ctrl-C in those seconds was a KeyboardInterrupt traceback."""
    out = tmp_path / "onnx"
    argv = ["--onnx", "--model", str(tiny_model_dir), "--output", str(out)]
    code, err = ctrl_c_while_importing("export.pipeline", "export.__main__:run", argv)
    assert (code, err.strip().splitlines()[-1:]) == (130, [f"interrupted: nothing written to {out}"]), err[-3000:]
    assert "Traceback" not in err and not out.exists()


def test_artifact_tokenizer_never_truncates_or_pads(tiny_model_dir, tmp_path, capsys):
    """A source tokenizer.json that truncates (sentence-transformers' MiniLM: 128) must not reach the artifact."""
    from tokenizers import Tokenizer

    source = tmp_path / "source"
    shutil.copytree(tiny_model_dir, source)
    saved = Tokenizer.from_file(str(source / "tokenizer.json"))
    saved.enable_truncation(max_length=8)
    saved.enable_padding(length=16)
    saved.save(str(source / "tokenizer.json"))
    code, _ = cli(
        [
            "--onnx",
            "--model",
            str(source),
            "--output",
            str(tmp_path / "out"),
            "--precision",
            "fp32",
            "--no-full-graph",
            "--no-validate",
        ],
        capsys,
    )
    assert code == 0
    shipped = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert shipped.truncation is None and shipped.padding is None
    text = "the acting was great and the story was even better than the book it was made from"
    saved.no_truncation()
    saved.no_padding()
    assert shipped.encode(text).ids == saved.encode(text).ids and len(shipped.encode(text).ids) > 16


def test_bad_model_paths_are_refused(tiny_model_dir, tmp_path, capsys):
    from transformers import DistilBertConfig, DistilBertModel

    no_head = tmp_path / "no_head"
    DistilBertModel(DistilBertConfig.from_pretrained(tiny_model_dir)).save_pretrained(no_head)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_model_dir / name, no_head / name)
    run = tmp_path / "run"  # a python -m train run stopped before its end: checkpoints, no model yet
    step = run / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    (run / "train_config.json").write_text("{}")
    cases = [
        (str(tmp_path / "missing"), "folder not found"),
        (str(no_head), "has no masked-LM head"),
        (str(tmp_path), "no config.json in the folder; pass a save_pretrained folder"),
        (str(run), f"the unfinished python -m train run in {run} (no model written yet); finish the run with"),
        (str(step), f"a checkpoint of the python -m train run in {run} (training state, not a model); finish"),
        (str(step), f"(training state, not a model); export the run's model: --model {run}"),  # run finished
        # an export folder (transformers said "no file named pytorch_model.bin, model.safetensors ...")
        (
            str(DEFAULT_MODEL_DIR),
            f"--model {DEFAULT_MODEL_DIR} is already an exported deniro_rt artifact (it has deniro.json; exported "
            "from runs/minilm-h200-r2-20k), not a model to export; pass the trained model it came from: a "
            "save_pretrained folder such as a python -m train --output run folder, or a hub id",
        ),
    ]
    for model, needle in cases:
        out = tmp_path / "out"
        if "export the run's model" in needle:
            shutil.copy(tiny_model_dir / "config.json", run / "config.json")
        code, lines = cli(["--onnx", "--model", model, "--output", str(out), "--no-validate"], capsys)
        assert code == EXIT_USAGE
        assert_one_error(lines, needle)
        assert not out.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["--onnx", "--output", "{out}", "--precision", "fp16", "--device", "cpu"],
            "--precision fp16 needs --device cuda",
        ),
        (["--onnx", "--output", "{out}", "--precision", "fp32,bf16"], "unknown --precision bf16"),
        (["--output", "{out}"], "pass --onnx"),
        (["--onnx"], "pass --output"),
        (
            ["--onnx", "--output", "{out}", "--calibration-sentences", "8"],
            "--calibration-sentences must be at least 16",
        ),
        (["--onnx", "--output", "{out}", "--opset", "13"], "--opset must be from 14 to 23 (default 17), got 13"),
        (["--onnx", "--output", "{model}", "--overwrite"], "which the new output would replace"),  # deleted the model
        (["--onnx", "--output", "{model}"], "which the new output would replace"),  # not "pass --overwrite"
    ],
)
def test_bad_options_are_refused(argv, needle, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, lines = cli(
        ["--model", str(tiny_model_dir), *(a.format(out=out, model=tiny_model_dir) for a in argv)], capsys
    )
    assert code == EXIT_USAGE
    assert_one_error(lines, needle)
    assert not out.exists() and (tiny_model_dir / "config.json").is_file()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available")
def test_cuda_without_cuda_provider_names_the_gpu_extra(tiny_model_dir, tmp_path, capsys):
    code, lines = cli(
        ["--onnx", "--model", str(tiny_model_dir), "--output", str(tmp_path / "out"), "--device", "cuda"], capsys
    )
    assert code == EXIT_USAGE
    assert_one_error(lines, "CUDAExecutionProvider", 'pip install "deniro[gpu]"', "CPUExecutionProvider")


@pytest.mark.parametrize("module", ["export", "export.card", "export.requantize", "train.shrink"])
def test_help_says_what_every_option_does(module):
    """export.card's --license and four of export.requantize's counts had no help text (only "(default: 0)"),
    train.shrink's required flags read "(default: )" and its last example lost its line break, and export's
    --int8-method described five of its nine methods."""
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    options = done.stdout.split("\noptions:\n")[1]
    found = re.finditer(r"^  (--[\w-]+)( [A-Z_{][^ ]*)?(.*?)(?=^  -|\Z)", options, re.M | re.S)
    entries = {m[1]: " ".join(m[3].split()) for m in found}
    for flag, text in entries.items():
        if flag != "--help":
            assert text and not text.startswith("(default") and "(default: )" not in text, (flag, text)
    if module == "export":
        assert all(method in entries["--int8-method"] for method in INT8_METHODS)
    if module == "train.shrink":
        assert "distilbert \\\n        --checkpoint" in done.stdout  # the example's continuation, as written


def test_help_gives_every_option_and_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        assert action.option_strings[0] in text
        assert "default" in action.help, action.option_strings


def test_precisions_parse_and_default_per_device():
    assert split_precisions(["fp32,int8", "INT8", " fp16 "]) == ("fp32", "int8", "fp16")
    assert ExportConfig(precision=("int8",)).precisions() == ("fp32", "int8")  # fp32 is always written
    assert ExportConfig().precisions() == ("fp32",)  # int8 is opt-in on CPU
    assert ExportConfig(device="cuda").precisions() == ("fp32", "fp16")


def test_compare_topk_counts_agreement_and_forgives_only_near_ties():
    ref = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    got = np.array([[1, 2, 3], [4, 6, 5], [9, 8, 7]])
    assert validate.compare_topk(ref, got, k=3) == {
        "top1_agreement": 2 / 3,
        "top3_identical": 1 / 3,
        "top3_overlap": 1.0,
    }
    scores = np.zeros((3, 10))
    scores[1, [5, 6]] = 1.0  # 5 and 6 tie in row 1: swapping them is not a disagreement
    scores[2, [7, 9]] = [2.0, 1.0]  # row 2's swap of 7 and 9 is real
    tied = validate.compare_topk(ref, got, k=3, ref_scores=scores, tie_tol=1e-6)
    assert tied["top3_identical"] == 2 / 3 and tied["top1_agreement"] == 2 / 3


def test_compare_logprobs_reports_the_largest_difference_of_any_row_and_token():
    """One log-prob off by 0.5 among 2 x 4 exact ones: the gate reads that 0.5 (relative to the logit scale 8)."""
    ref_logits = np.array([[8.0, 1.0, 0.0, -2.0], [0.0, 3.0, 2.0, 1.0]])
    exact = ref_logits - np.log(np.exp(ref_logits).sum(-1, keepdims=True))  # [2, 4] log-softmax
    off = exact.copy()
    off[1, 2] += 0.5
    got = validate.compare_logprobs(ref_logits, off)
    assert got["max_abs_logprob_diff"] == pytest.approx(0.5) and got["logit_scale"] == 8.0
    assert got["max_rel_logit_diff"] == pytest.approx(0.5 / 8)
    assert validate.compare_logprobs(ref_logits, exact)["max_abs_logprob_diff"] == pytest.approx(0, abs=1e-12)


def test_fp16_forgives_swaps_within_its_rounding_and_fp32_does_not():
    ref_logits = np.array([[20.0, 19.99, 5.0, 4.0, 3.0, 2.0], [20.0, 19.5, 5.0, 4.0, 3.0, 2.0]])  # scale 20
    swapped = np.array([[1, 0, 2, 3, 4], [1, 0, 2, 3, 4]])  # both rows put the runner-up first
    # row 0's gap (0.01) is under fp16's 1e-3 x 20 = 0.02; row 1's (0.5) is a real disagreement
    assert validate.topk_metrics(ref_logits, swapped, k=5, tie_rel=validate.TIE_REL["fp16"])["top1_agreement"] == 0.5
    assert validate.topk_metrics(ref_logits, swapped, k=5)["top1_agreement"] == 0.0  # fp32: 2e-3 tolerance


def test_check_reports_failed_thresholds():
    thresholds = {"top1_agreement": (">=", 0.97), "perplexity_rel_diff": ("<=", 0.03)}
    assert validate.check({"top1_agreement": 0.99, "perplexity_rel_diff": None}, thresholds) == []
    failed = validate.check({"top1_agreement": 0.9, "perplexity_rel_diff": float("nan")}, thresholds)
    assert len(failed) == 2 and failed[0].startswith("top1_agreement 0.9 ")


def test_check_passes_a_metric_exactly_at_its_bound():
    """A bound is inclusive: top-1 of exactly 97 % passes int8's >= 0.97, and no mismatch passes <= 0."""
    int8 = validate.THRESHOLDS["int8"]
    assert (int8["top1_agreement"], int8["perplexity_rel_diff"]) == ((">=", 0.97), ("<=", 0.03))
    assert validate.check({"top1_agreement": 0.97, "perplexity_rel_diff": 0.03, "batch_topk_mismatches": 0}, int8) == []
    assert validate.check({"batch_topk_mismatches": 1}, {"batch_topk_mismatches": ("<=", 0)}) == [
        "batch_topk_mismatches 1 (needs <= 0)"
    ]


def test_a_perplexity_far_below_the_reference_fails_like_one_far_above():
    """perplexity_rel_diff is |ppl / ref - 1|: a graph scoring 10 % lower than PyTorch is as wrong as 10 % higher."""
    assert validate.rel_diff(90.0, 100.0) == pytest.approx(0.1) == validate.rel_diff(110.0, 100.0)
    assert validate.rel_diff(None, 100.0) is None and validate.rel_diff(90.0, None) is None
    lower = validate.verdict("int8", {"top1_agreement": 1.0, "perplexity_rel_diff": validate.rel_diff(90.0, 100.0)})
    assert not lower["passed"] and lower["failed"][0].startswith("perplexity_rel_diff 0.1 ")


def test_decisive_top1_judges_only_rows_with_a_clear_first_candidate():
    """Rows whose reference leads its runner-up by >= 0.01 in probability count; a near tie does not."""
    probs = np.array(
        [
            [0.60, 0.30, 0.10],  # decisive, answered right
            [0.60, 0.30, 0.10],  # decisive, answered wrong
            [0.45, 0.445, 0.105],  # a near tie (0.005 apart): not judged, whatever the answer
            [0.10, 0.20, 0.70],  # decisive, the first candidate last in the vocabulary
        ]
    )
    ids = np.array([[0, 1], [1, 0], [1, 0], [2, 1]])  # [n, k] best first
    got = validate.decisive_top1(np.log(probs), ids)
    assert got == {"top1_decisive": pytest.approx(2 / 3), "decisive_rows": 3}
    assert validate.decisive_top1(np.log(probs[2:3]), ids[2:3]) == {"top1_decisive": None, "decisive_rows": 0}


class BatchDependentSession:
    """A fast graph stand-in over a 6-token vocabulary whose first row's runner-up and third candidate swap when
    it runs padded in a batch (what a batch-dependent kernel does); alone, every row ranks 0 > 1 > 2 > ..."""

    LOGITS = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])

    def run(self, names, feeds):
        rows = feeds["mask_index"] // feeds["input_ids"].shape[1]  # [n] the row of each mask
        logits = np.tile(self.LOGITS, (len(rows), 1))  # [n, vocab]
        if len(feeds["input_ids"]) > 1:
            logits[rows == 0, 1:3] = logits[rows == 0, 2:0:-1]
        logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        k = int(feeds["top_k"][0])
        ids = np.argsort(-logprobs, axis=1, kind="stable")[:, :k]
        return [np.take_along_axis(logprobs, ids, 1), ids, np.take_along_axis(logprobs, feeds["target_ids"], 1)]


def test_batch_drift_counts_every_row_whose_top_k_changes_with_the_batch():
    """batch_topk_mismatches counts a row whose top-k differs in any rank (here: ranks 2 and 3 of its first mask);
    batch_drift is the largest probability change of the row's own top-k ids."""
    batch = validate.pad_batch(
        [np.array([2, 7, 4, 3]), np.array([2, 4, 7, 7, 4, 3])], [np.array([2]), np.array([1, 4])], pad_id=0
    )
    drift = validate.batch_drift(BatchDependentSession(), batch, k=3)
    probs = np.exp(BatchDependentSession.LOGITS) / np.exp(BatchDependentSession.LOGITS).sum()
    assert drift == {"batch_drift": pytest.approx(probs[1] - probs[2]), "batch_topk_mismatches": 1}


def test_only_advisory_records_never_fail_an_export():
    results = {
        "fp32": {"passed": True, "failed": []},
        "bf16": {"passed": False, "failed": ["top1_decisive 0.9 (needs >= 0.995)"]},  # informs the CPU default only
        "int8": {"passed": False, "failed": ["top1_agreement 0.9 (needs >= 0.97)"]},
    }
    assert validate.failures(results) == ["int8: top1_agreement 0.9 (needs >= 0.97)"]


# --------------------------------------------------------------------------- int8 methods and batch invariance
@pytest.fixture(scope="module")
def tiny_fp32_fused(tiny_artifact):
    return onnx.load(str(tiny_artifact / FAST_GRAPHS["fp32"]))


@pytest.fixture(scope="module")
def tiny_validation(tiny, imdb_dir):
    model, tokenizer = tiny
    texts, origin = validate.load_texts(str(imdb_dir), "test", "text")
    spec = validate.ValidationSpec(
        model.config.vocab_size, 128, sentences=64, random_sequences=0, perplexity_chunks=4, batch_size=32
    )
    return validate.build_validation_set(tokenizer, texts, origin, spec)


def test_attention_to_mha_computes_the_same(tiny_fp32_fused, tiny_validation, tmp_path):
    """The int8 graphs split Attention into a QKV MatMul + MultiHeadAttention: same outputs in fp32."""
    rewritten = optimize.attention_to_mha(optimize._copy(tiny_fp32_fused))
    ops = Counter(n.op_type for n in rewritten.graph.node)
    assert ops["MultiHeadAttention"] == 2 and "Attention" not in ops
    onnx.save(rewritten, str(tmp_path / "mha.onnx"))
    onnx.save(tiny_fp32_fused, str(tmp_path / "attention.onnx"))
    batch = tiny_validation.queries[0]  # padded rows
    every_id = np.broadcast_to(np.arange(600, dtype=np.int64), (len(batch.mask_index), 600))
    expected = validate.run_fast(validate.session_for(tmp_path / "attention.onnx", CPU), batch, every_id, 5)
    got = validate.run_fast(validate.session_for(tmp_path / "mha.onnx", CPU), batch, every_id, 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[2], expected[2], atol=1e-5, rtol=0)


def build_method(method: str, tiny_model_dir, tiny_validation, tmp_path) -> Path:
    from export.graphs import export_fast
    from export.model import load_source

    source = load_source(str(tiny_model_dir), None, "sdpa")
    export_fast(source.model, tmp_path / "raw.onnx", 17)
    rows = [b.input_ids[i][b.attention_mask[i] == 1] for b in tiny_validation.queries for i in range(len(b.input_ids))]
    tok = source.tokenizer
    calibration = optimize.calibration_feeds(rows, tok.mask_token_id, tok.pad_token_id, 64)
    optimize.build_graph(
        "int8",
        tmp_path / "raw.onnx",
        tmp_path / f"{method}.onnx",
        optimize.Arch.of(source.model.config),
        True,
        True,
        method,
        calibration,
    )
    return tmp_path / f"{method}.onnx"


@pytest.mark.parametrize(
    "method, invariant", [("static", True), ("static-percentile", True), ("nbits", True), ("dynamic", False)]
)
def test_int8_methods_batch_invariance(method, invariant, tiny_model_dir, tiny_validation, tmp_path):
    """Fixed (static) or per-row (nbits) activation scales: a sentence's answer is the same alone and padded
    in a batch; dynamic quantization's per-tensor scale makes it depend on its batch-mates."""
    session = validate.session_for(build_method(method, tiny_model_dir, tiny_validation, tmp_path), CPU)
    drift = [validate.batch_drift(session, batch) for batch in tiny_validation.queries]
    worst = max(d["batch_drift"] for d in drift)
    mismatches = sum(d["batch_topk_mismatches"] for d in drift)
    if invariant:
        assert worst <= 1e-4 and mismatches == 0, (worst, mismatches)
    else:  # this tiny random model is barely sensitive (tests/test_invariance.py: 1e-2 on the shipped one)
        assert worst > 1e-6, worst  # the check sees the drift where it exists


def test_static_int8_needs_calibration(tiny_model_dir, tmp_path):
    with pytest.raises(DeniroError, match="static int8 quantization needs calibration sentences"):
        build_method("static", tiny_model_dir, validate.ValidationSet([], [], "none"), tmp_path)


def test_calibration_feeds_have_one_shape():
    rows = [np.array([2, 4, 7, 3]), np.array([2, 9, 4, 8, 8, 3]), np.array([2, 4, 3])]
    feeds = optimize.calibration_feeds(rows, mask_id=4, pad_id=0, seq_len=5, batch_size=2)
    assert len(feeds) == 1 and feeds[0]["input_ids"].shape == (2, 5)
    assert feeds[0]["input_ids"].tolist() == [[2, 4, 7, 3, 0], [2, 9, 4, 8, 8]]
    assert feeds[0]["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert feeds[0]["mask_index"].tolist() == [1, 7]


def test_batch_invariance_is_gated_on_cpu_only():
    """A padded-batch drift fails fp32 on CPU; on CUDA it is reported, not gated, until measured on a GPU."""
    metrics = {
        "max_rel_logit_diff": 0.0,
        "top5_identical": 1.0,
        "perplexity_rel_diff": 0.0,
        "batch_drift": 2e-3,
        "batch_topk_mismatches": 1,
    }
    on_cpu = validate.verdict("fp32", metrics)
    assert not on_cpu["passed"] and [f.split()[0] for f in on_cpu["failed"]] == ["batch_drift", "batch_topk_mismatches"]
    on_cuda = validate.verdict("fp32", metrics, on_cpu=False)
    assert on_cuda["passed"] and on_cuda["metrics"]["batch_drift"] == 2e-3


# --------------------------------------------------------------------------- python -m export.requantize
REQUANTIZE_SMALL = ["--calibration-sentences", "16", "--sentences", "24", "--perplexity-chunks", "4"]


def test_requantize_swaps_graph_and_manifest_together_or_changes_nothing(
    tiny_artifact, imdb_dir, tmp_path, monkeypatch
):
    from export.requantize import EXIT_VALIDATION as REQUANTIZE_FAILED
    from export.requantize import run as requantize

    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    raw = json.loads((folder / MANIFEST).read_text())  # an fp32-only export: requantize must add the graph
    del raw["graphs"]["int8"], raw["files"][FAST_GRAPHS["int8"]]
    (folder / FAST_GRAPHS["int8"]).unlink()
    (folder / MANIFEST).write_text(json.dumps(raw))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    argv = ["--model", str(folder), "--dataset", str(imdb_dir), "--int8-method", "static", *REQUANTIZE_SMALL]
    with monkeypatch.context() as patch:  # a bar no graph can pass: validation fails, nothing may change
        patch.setitem(validate.THRESHOLDS["int8"], "top1_agreement", (">=", 1.01))
        assert requantize(argv) == REQUANTIZE_FAILED
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no staging dir left either
    assert requantize(argv) == 0
    manifest = load_manifest(folder)
    assert manifest.raw["export_config"]["int8_method"] == "static" and manifest.raw["validation"]["int8"]["passed"]
    assert manifest.graphs["int8"] == FAST_GRAPHS["int8"] and FAST_GRAPHS["int8"] not in before
    assert FillMask(folder, device="cpu", precision="int8").precision == "int8"  # was "the artifact has no int8 graph"
    for name in manifest.files:
        verify_file(manifest, name)  # the new graph's sha256 is the manifest's
    assert (folder / FAST_GRAPHS["fp32"]).read_bytes() == before[FAST_GRAPHS["fp32"]]


def test_requantize_as_a_command_ends_with_its_validation_line(tiny_artifact, imdb_dir, tmp_path):
    """`python -m export.requantize` printed nothing after its data lines when it succeeded: its logger was
    __main__'s, below the WARNING root the command sets up."""
    import subprocess
    import sys

    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    argv = ["--model", str(folder), "--dataset", str(imdb_dir), "--int8-method", "static", *REQUANTIZE_SMALL]
    command = [sys.executable, "-m", "export.requantize", *argv]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"requantized {folder} (static): ") and "top1_agreement" in last, done.stderr


def test_requantize_ctrl_c_is_one_line_and_changes_nothing(tiny_artifact, imdb_dir, tmp_path, ctrl_c_while_importing):
    """run_main had no line for Ctrl-C: while onnx imported (seconds) or during the work it was a KeyboardInterrupt
    traceback. The artifact is untouched: the new graph is staged in a temp folder that the interrupt removes."""
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    argv = ["--model", str(folder), "--dataset", str(imdb_dir), *REQUANTIZE_SMALL]
    code, err = ctrl_c_while_importing("onnx", "export.requantize:run", argv)
    assert (code, err.strip().splitlines()[-1:]) == (130, [f"interrupted: {folder} unchanged"]), err[-3000:]
    assert "Traceback" not in err and {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_requantize_ctrl_c_between_graph_and_manifest_is_ignored(tiny_artifact, imdb_dir, tmp_path, monkeypatch):
    """Ctrl-C after the new graph's rename but before its manifest's left a graph the manifest refuses (sha256):
    the two renames now ignore it, and the artifact is whole."""
    import os
    import signal

    from export.requantize import run as requantize

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    real_replace = os.replace

    def replace_then_ctrl_c(source, target):
        real_replace(source, target)
        if Path(target) == folder / FAST_GRAPHS["int8"]:
            os.kill(os.getpid(), signal.SIGINT)  # Python raises it at its next instruction

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    assert requantize(["--model", str(folder), "--dataset", str(imdb_dir), *REQUANTIZE_SMALL]) == 0
    manifest = load_manifest(folder)
    for name in manifest.files:
        verify_file(manifest, name)  # the new graph's sha256 is the manifest's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards


def test_bf16_ctrl_c_is_one_line_and_changes_nothing(tiny_artifact, imdb_dir, tmp_path, ctrl_c_while_importing):
    """run_main had no line for Ctrl-C: while transformers imported (seconds) or bf16 was scored it was a
    KeyboardInterrupt traceback."""
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    argv = ["--artifact", str(folder), "--dataset", str(imdb_dir)]
    code, err = ctrl_c_while_importing("transformers", "export.bf16:cli", argv)
    assert (code, err.strip().splitlines()[-1:]) == (130, [f"interrupted: {folder} unchanged"]), err[-3000:]
    assert "Traceback" not in err and {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_requantize_and_bf16_refuse_a_damaged_artifact_or_no_text_before_any_work(
    tiny_artifact, imdb_dir, tmp_path, capsys
):
    """A damaged fast.onnx or tokenizer.json was onnx's DecodeError or the tokenizer's "EOF while parsing"
    traceback; --calibration-sentences 0 a ValueError from max(); a --dataset that did not load failed after
    the quantization, naming --random-sequences, a flag requantize does not have."""
    from export.bf16 import cli as bf16_cli
    from export.requantize import run as requantize

    for name in (FAST_GRAPHS["fp32"], "tokenizer.json"):
        folder = tmp_path / f"damaged-{name}"
        shutil.copytree(tiny_artifact, folder)
        (folder / name).write_bytes((folder / name).read_bytes()[:500])
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        for command in (["--model", str(folder), *REQUANTIZE_SMALL], ["--artifact", str(folder)]):
            assert (requantize if command[0] == "--model" else bf16_cli)([*command, "--dataset", str(imdb_dir)]) == 2
            error = capsys.readouterr().err.strip().splitlines()[-1]
            assert error.startswith(f"error: {folder / name} is corrupted or was replaced (sha256 ")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    copy = shutil.copytree(tiny_artifact, tmp_path / "copy")  # requantize rewrites its --model in place
    argv = ["--model", str(copy), "--dataset", str(imdb_dir), *REQUANTIZE_SMALL]
    assert requantize([*argv, "--calibration-sentences", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --calibration-sentences must be at least 16, got 0"
    assert requantize([*argv, "--dataset", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the int8 graph is validated on review text: random ids (dataset {str(tmp_path / 'nowhere')!r} "
        "unavailable); pass --dataset with a folder of <split>.parquet files (e.g. ../shared/data/imdb)"
    )
