"""precision="bf16" on CPU: the shipped fp32 graph compiled by OpenVINO in bf16 (deniro_rt/openvino.py, issue 22).

Its promise: fp32's decisive answers, and a text's answer (ids and scores, bit for bit) independent of the
batch it runs in. Checked on IMDB sentences and review-length texts against the fp32 graph.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import deniro_rt.openvino
from deniro_rt import FillMask
from deniro_rt.artifact import MANIFEST, load_manifest
from deniro_rt.data import mask_one_word, review_sentences
from deniro_rt.errors import DeniroError
from deniro_rt.models import DEFAULT_MODEL_DIR
from deniro_rt.openvino import (
    AMX_MIN_TOKENS,
    MIN_TOKENS,
    OpenVinoGraph,
    bf16_available,
    bf16_by_default,
    bf16_kernels,
    bf16_min_tokens,
    check_bf16,
    floored,
)
from deniro_rt.providers import CPU, CUDA, resolve_precision
from export.bf16 import cli as bf16_cli
from export.config import ExportConfig
from export.pipeline import main as export_main
from export.validate import THRESHOLDS


@pytest.fixture(scope="module")
def texts(imdb_texts) -> list[str]:
    """~120 masked test sentences (5-40 tokens) and 24 review openings (up to ~250 tokens), one mask each."""
    rng, out = np.random.default_rng(0), []
    for review in imdb_texts["test"][:60]:
        out += [m[0] for m in (mask_one_word(s, rng, "[MASK]") for s in review_sentences(review)[:2]) if m]
    for review in imdb_texts["test"][100:124]:
        words = review.split()[:180]
        words[len(words) // 2] = "[MASK]"
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def bf16():
    if not bf16_available():  # a CPU without bf16 instructions gets the error instead (tested below)
        with pytest.raises(DeniroError, match="this CPU has no bf16 instructions"):
            FillMask(device="cpu", precision="bf16")
        return None
    return FillMask(device="cpu", precision="bf16")


def test_bf16_answers_do_not_depend_on_the_batch(bf16, texts):
    if bf16 is None:
        return
    alone = bf16.fill_arrays(texts, batch_size=1)
    for batch_size in (7, 64, len(texts)):
        batched = bf16.fill_arrays(texts, batch_size=batch_size)
        assert np.array_equal(batched.token_ids, alone.token_ids) and np.array_equal(batched.scores, alone.scores)
    assert [bf16.fill(t) for t in texts[:20]] == bf16.fill(texts[:20])  # the one-text path too, dicts


def test_bf16_a_text_scores_the_same_at_every_padded_length(bf16, texts):
    """The rule behind MIN_TOKENS itself: a text padded to any multiple of it gives the same bits (a batch's
    length is its longest text's, rounded up). With multiples of 8 instead, texts of 22-40 tokens changed."""
    if bf16 is None:
        return
    graph = bf16.session
    feeds, _ = bf16.prepared_feeds(texts[::3], batch_size=1)
    for feed in feeds:
        seq = feed["input_ids"].shape[1]
        first = -(-seq // graph.min_tokens) * graph.min_tokens
        alone = graph.run(floored(feed, first, bf16.pad_id))
        for padded in (first + graph.min_tokens, first + 3 * graph.min_tokens, 256):
            longer = graph.run(floored(feed, padded, bf16.pad_id))
            assert all(np.array_equal(a, b) for a, b in zip(alone, longer)), (seq, padded)


def test_bf16_keeps_fp32s_decisive_answers(bf16, texts):
    if bf16 is None:
        return
    fp32 = FillMask(device="cpu", precision="fp32").fill_arrays(texts)
    got = bf16.fill_arrays(texts)
    decisive = fp32.scores[:, 0] - fp32.scores[:, 1] >= 0.01  # a swap of near-ties is not another answer
    assert decisive.sum() > 100
    assert np.array_equal(got.token_ids[decisive, 0], fp32.token_ids[decisive, 0])
    assert not np.array_equal(got.scores, fp32.scores)  # it really ran in bf16
    assert np.abs(np.log(got.scores[:, 0]) - np.log(fp32.scores[:, 0])).max() < 0.1


def test_floored_pads_to_a_multiple_of_min_tokens_and_moves_the_mask_index():
    ids = np.array([[2, 7, 4, 3], [2, 4, 3, 0]], np.int64)  # [batch 2, seq 4]
    feed = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "mask_index": np.array([2, 5])}
    out = floored(feed, MIN_TOKENS, pad_id=0)
    assert out["input_ids"].shape == (2, MIN_TOKENS) and out["attention_mask"][:, 4:].sum() == 0
    assert out["input_ids"].reshape(-1)[out["mask_index"]].tolist() == [4, 4]
    assert out["mask_index"].tolist() == [2, MIN_TOKENS + 1]
    long = {**feed, "input_ids": np.zeros((2, 2 * MIN_TOKENS), np.int64)}
    assert floored(long, MIN_TOKENS, 0) is long and floored(feed, 0, 0) is feed  # nothing to pad
    capped = floored(feed, MIN_TOKENS, 0, max_tokens=MIN_TOKENS - 3)  # never past the model's positions
    assert capped["input_ids"].shape == (2, MIN_TOKENS - 3)


def test_bf16_pads_to_32_on_amx_and_where_the_cpu_is_unknown(tmp_path):
    avx512 = tmp_path / "avx512"
    avx512.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    no_flags = tmp_path / "no-flags"
    no_flags.write_text("processor\t: 0\n")
    assert bf16_min_tokens(avx512) == MIN_TOKENS == 16
    assert bf16_min_tokens(amx) == bf16_min_tokens(no_flags) == bf16_min_tokens(tmp_path / "missing") == AMX_MIN_TOKENS
    kernels = [bf16_kernels(path) for path in (avx512, amx, no_flags, tmp_path / "missing")]
    assert kernels == ["avx512_bf16", "amx", "unknown", "unknown"]  # what a bf16 record says it was measured on


def test_bf16_is_the_cpu_default_only_where_its_gate_was_measured(tmp_path, monkeypatch):
    cpu = {
        "avx512-bf16": "fpu avx512f avx512_bf16 avx512_vnni",  # the 2-core EPYC the gate passed on
        "amx": "fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8",  # other kernels: not measured yet
        "avx2": "fpu avx2 fma",  # no bf16 instructions
    }
    for name, flags in cpu.items():
        (tmp_path / name).write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert bf16_by_default(tmp_path / "avx512-bf16") == bf16_available()  # OpenVINO's own check has the last word
    assert not bf16_by_default(tmp_path / "amx") and not bf16_by_default(tmp_path / "avx2")
    assert not bf16_by_default(tmp_path / "missing")  # flags unknown (not Linux): fp32
    monkeypatch.setitem(sys.modules, "openvino", None)  # the extra not installed: fp32, no error
    assert not bf16_by_default(tmp_path / "avx512-bf16")


def test_the_default_precision_is_bf16_only_where_validated_and_the_cpu_allows(monkeypatch):
    fp32_only, passed = {"fp32": "fast.onnx"}, ("bf16",)  # passed: the artifact's bf16 record passed
    monkeypatch.setattr(deniro_rt.openvino, "bf16_by_default", lambda: True)
    assert resolve_precision(None, CPU, fp32_only, passed) == "bf16"
    assert resolve_precision(None, CPU, fp32_only) == "fp32"  # no passed record (failed, or never checked)
    assert resolve_precision(None, CPU, {"int8": "fast_int8.onnx"}, passed) == "int8"  # bf16 needs the fp32 graph
    assert resolve_precision("fp32", CPU, fp32_only, passed) == "fp32"  # an explicit choice wins
    assert resolve_precision(None, CUDA, {**fp32_only, "fp16": "fast_fp16.onnx"}, passed) == "fp16"
    monkeypatch.setattr(deniro_rt.openvino, "bf16_by_default", lambda: False)  # AMX, AVX2, or no openvino
    assert resolve_precision(None, CPU, {**fp32_only, "int8": "fast_int8.onnx"}, passed) == "fp32"  # int8: opt-in


def test_bench_times_the_runtimes_default_precision_too(monkeypatch):
    """bench's default precisions: what the artifact has for the device, plus the one FillMask picks here."""
    from bench.engines import deniro_precisions

    shipped = load_manifest(DEFAULT_MODEL_DIR)  # fp32 graph, passed bf16 record
    monkeypatch.setattr(deniro_rt.openvino, "bf16_by_default", lambda: True)
    assert deniro_precisions(shipped, "cpu", None) == ["fp32", "bf16"]
    assert deniro_precisions(shipped, "cpu", "fp32") == ["fp32"]  # --precisions wins
    monkeypatch.setattr(deniro_rt.openvino, "bf16_by_default", lambda: False)
    assert deniro_precisions(shipped, "cpu", None) == ["fp32"]


def test_the_shipped_model_carries_a_passed_bf16_record():
    """export/bf16.py's record, made on the full IMDB test split (2,000 sentences, 200 chunks; docs/precision.md)."""
    record = load_manifest(DEFAULT_MODEL_DIR).raw["validation"]["bf16"]
    assert record["passed"] and record["reference"] == "fp32 graph" and record["kernels"] == "avx512_bf16"
    assert record["metrics"]["decisive_rows"] >= 1800 and record["metrics"]["top1_decisive"] >= 0.995


def test_export_bf16_checks_an_artifact_and_records_it(tmp_path, imdb_dir, capsys):
    """python -m export.bf16 on a copy of the shipped model: the record lands in deniro.json, which still loads
    (every hashed file untouched), and FillMask's default follows it."""
    artifact = tmp_path / "shipped"
    shutil.copytree(DEFAULT_MODEL_DIR, artifact)
    manifest = json.loads((artifact / MANIFEST).read_text())
    del manifest["validation"]["bf16"]
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    assert FillMask(artifact, device="cpu").precision == "fp32"  # no record: fp32 whatever the CPU
    assert bf16_cli(["--dataset", str(imdb_dir)]) == 2  # no --artifact: an error, never the shipped folder
    assert bf16_cli(["--artifact", str(artifact), "--perplexity-chunks", "-1"]) == 2  # was numpy's ValueError
    assert capsys.readouterr().err.splitlines()[-1] == "error: --sentences and --perplexity-chunks must not be negative"
    args = ["--artifact", str(artifact), "--dataset", str(imdb_dir), "--sentences", "150", "--perplexity-chunks", "16"]
    if not bf16_available():
        assert bf16_cli(args) == 2  # the error names the extra and the CPU it needs
        return
    assert bf16_cli(args) == 0
    record = load_manifest(artifact).raw["validation"]["bf16"]
    assert record["passed"] and record["metrics"]["decisive_rows"] > 100 and record["metrics"]["rows"] == 150
    assert record["config"]["sentences"] == 150  # the check's config saved next to its result
    assert FillMask(artifact, device="cpu").precision == ("bf16" if bf16_by_default() else "fp32")


def test_a_failed_bf16_record_never_fails_an_export(tiny_model_dir, imdb_dir, tmp_path, monkeypatch):
    """bf16 held to a bound nothing meets: the export still succeeds, its record says failed and why, and the
    artifact's CPU default stays fp32 (on a machine without bf16 there is no record at all)."""
    monkeypatch.setitem(THRESHOLDS, "bf16", {**THRESHOLDS["bf16"], "top1_decisive": (">=", 1.01)})
    config = ExportConfig(onnx=True, model=str(tiny_model_dir), output=str(tmp_path / "a"), dataset=str(imdb_dir))
    artifact = export_main(replace(config, full_graph=False))
    record = load_manifest(artifact).raw["validation"].get("bf16")
    if bf16_available():
        assert not record["passed"] and record["failed"][0].startswith("top1_decisive 1 (needs >= 1.01)")
    else:
        assert record is None
    assert load_manifest(artifact).passed("fp32") and FillMask(artifact, device="cpu").precision == "fp32"


def test_a_bf16_record_without_decisive_masks_names_the_command_that_checks_more(
    tiny_model_dir, imdb_dir, tmp_path, monkeypatch
):
    """No mask decisive (an undertrained model): the record said "raise --sentences", which in `python -m export`
    is export's own --sentences, the fp32 validation's (the bf16 check always took 2,000)."""
    import export.validate

    monkeypatch.setattr(export.validate, "decisive_top1", lambda *_: {"top1_decisive": None, "decisive_rows": 0})
    config = ExportConfig(onnx=True, model=str(tiny_model_dir), output=str(tmp_path / "a"), dataset=str(imdb_dir))
    record = load_manifest(export_main(replace(config, full_graph=False))).raw["validation"].get("bf16")
    if not bf16_available():
        assert record is None
        return
    assert not record["passed"] and record["failed"][-1] == (
        f"no decisive masks among {record['metrics']['rows']} (fp32's first candidate never led its second by 0.01), "
        "nothing to judge bf16 on (an undertrained model has none); python -m export.bf16 --artifact DIR "
        "--sentences N checks more"
    )


def test_bf16_errors_name_the_fix(tiny_artifact, monkeypatch):
    with pytest.raises(DeniroError, match="precision bf16 runs on CPUExecutionProvider only; on CUDAExecutionProvider"):
        resolve_precision("bf16", CUDA, {"fp32": "fast.onnx", "fp16": "fast_fp16.onnx"})
    with pytest.raises(DeniroError, match=r"compiles the artifact's fp32 graph, and it has only int8; re-export"):
        resolve_precision("bf16", CPU, {"int8": "fast_int8.onnx"})
    with pytest.raises(DeniroError, match="precision must be one of fp32, int8, fp16, bf16, got 'bf17'"):
        resolve_precision("bf17", CPU, {"fp32": "fast.onnx"})
    with pytest.raises(DeniroError, match=r"this CPU has no bf16 instructions .*FP32, INT8.*precision='fp32'"):
        check_bf16(["FP32", "INT8"])
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(DeniroError, match=r'not installed: pip install "deniro\[openvino\]"'):
        FillMask(tiny_artifact, device="cpu", precision="bf16")


def test_f32_engine_on_the_tiny_artifact_equals_onnxruntime(tiny_artifact):
    """OpenVinoGraph itself (f32: no padding floor) against the runtime's ORT session on the same feed."""
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    feeds, _ = fm.prepared_feeds(["the film was [MASK] .", "a [MASK] , long and [MASK] story"], batch_size=2)
    graph = OpenVinoGraph(tiny_artifact / fm.graph_file, "f32")
    ov, ort = graph.run(feeds[0]), fm.run_graph(feeds[0])
    assert np.array_equal(ov[1], ort[1]) and np.allclose(ov[0], ort[0], atol=1e-5)


def test_cli_runs_bf16():
    out = subprocess.run(
        [sys.executable, "-m", "deniro_rt", "--precision", "bf16", "--json", "This is a great [MASK]!"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not bf16_available():
        assert out.returncode != 0 and "no bf16 instructions" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert '"token_str": "movie"' in out.stdout
