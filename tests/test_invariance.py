"""Same answer whatever the batch (issue 11): a text's predictions do not depend on its batch-mates or padding.

fill(texts) must equal [fill(t) for t in texts], and a text padded into a longer batch must get the same
answer: identical token ids, scores within 1e-5 (fp32) and 1e-4 (int8). Checked on the shipped model (fp32, its
one graph) and on the tiny exported model (fp32 and int8), with 64 short IMDB test sentences (one whole word
masked each).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deniro_rt import FillMask
from deniro_rt.artifact import FAST_GRAPHS
from deniro_rt.data import mask_one_word, review_sentences
from deniro_rt.models import DEFAULT_MODEL_DIR

TOLERANCE = {"fp32": 1e-5, "int8": 1e-4}
LONG = (
    "the story follows a family that moves to a small town by the sea , where the father takes a job at the "
    "old lighthouse and the children slowly find out that the [MASK] next door has a secret of its own ."
)


@pytest.fixture(scope="module")
def sentences(imdb_texts) -> list[str]:
    """64 short test-review sentences (5-20 words), one whole word masked in each, seeded."""
    rng = np.random.default_rng(11)
    found = []
    for review in imdb_texts["test"]:
        short = [s for s in review_sentences(review) if 5 <= len(s.split()) <= 20]
        masked = mask_one_word(short[0], rng) if short else None
        if masked is not None:
            found.append(masked[0])
        if len(found) == 64:
            return found
    pytest.fail(f"only {len(found)} short sentences in the IMDB sample")


CASES = [("shipped", "fp32"), ("tiny", "fp32"), ("tiny", "int8")]  # the shipped model has one graph: fp32


def assert_same(got: list[dict], alone: list[dict], tolerance: float, where: str) -> None:
    assert [p["token"] for p in got] == [p["token"] for p in alone], where
    worst = max(abs(a["score"] - b["score"]) for a, b in zip(got, alone))
    assert worst <= tolerance, f"{where}: scores differ by {worst:.3g}"


@pytest.mark.parametrize("model, precision", CASES)
def test_batched_equals_one_by_one_and_padding_changes_nothing(model, precision, sentences, request):
    model_dir = DEFAULT_MODEL_DIR if model == "shipped" else request.getfixturevalue("tiny_artifact")
    fm = FillMask(model_dir, device="cpu", precision=precision)
    alone = [fm.fill(text) for text in sentences]
    batched = fm.fill(sentences)  # one batch of 64: most texts padded to the longest
    small_batches = fm.fill(sentences, batch_size=8)  # other batch-mates, other padding
    padded = [fm.fill([text, LONG])[0] for text in sentences[:16]]  # each padded to a long text's length
    for i, text in enumerate(sentences):
        assert_same(batched[i], alone[i], TOLERANCE[precision], f"{precision} batch of 64, text {i}: {text!r}")
        assert_same(small_batches[i], alone[i], TOLERANCE[precision], f"{precision} batches of 8, text {i}")
    for i, got in enumerate(padded):
        assert_same(got, alone[i], TOLERANCE[precision], f"{precision} padded next to a long text, text {i}")


def rows_of(fm: FillMask, texts: list[str]) -> list[np.ndarray]:
    return fm.encode(texts, truncation=False)[0]


def test_the_check_sees_batch_dependence(sentences, tmp_path):
    """Dynamic int8 (one activation scale per call over the whole batch) fails the same check that the
    shipped fp32 graph and an nbits int8 graph (per-row activation scales) pass: the test can fail."""
    from export import validate
    from export.config import INT8_METHODS
    from export.optimize import quantize_fused
    from export.weights import float_weights

    fm = FillMask(DEFAULT_MODEL_DIR, device="cpu", precision="fp32")
    rows = rows_of(fm, sentences)
    batch = validate.pad_batch(rows, [np.flatnonzero(r == fm.mask_id) for r in rows], fm.pad_id)
    fp32 = float_weights(onnx.load(str(DEFAULT_MODEL_DIR / FAST_GRAPHS["fp32"])))  # int8-stored -> constants
    graphs = {"fp32": DEFAULT_MODEL_DIR / FAST_GRAPHS["fp32"]}
    for method in ("dynamic", "nbits"):
        graphs[method] = tmp_path / f"{method}.onnx"
        quantize_fused(fp32, graphs[method], INT8_METHODS[method])
    drift = {
        name: validate.batch_drift(
            validate.session_for(path, ["CPUExecutionProvider"], "fp32" if name == "fp32" else None), batch
        )
        for name, path in graphs.items()
    }
    assert drift["dynamic"]["batch_drift"] > 1e-3 and drift["dynamic"]["batch_topk_mismatches"] > 0, drift
    for name in ("fp32", "nbits"):
        assert drift[name]["batch_drift"] <= 1e-4 and drift[name]["batch_topk_mismatches"] == 0, drift


def test_bench_quant_reports_the_largest_drift(tmp_path, imdb_dir):
    """python -m bench quant's rows: agreement with fp32 and the largest batch drift per int8 method."""
    from bench.quant import QuantConfig, main

    config = QuantConfig(
        methods="static-percentile,dynamic",
        dataset=str(imdb_dir),
        sentences=32,
        perplexity_chunks=4,
        drift_sentences=32,
        calibration_sentences=32,
        timed_calls=2,
        out=str(tmp_path),
    )
    report = main(config)
    agreement = report["agreement"]
    assert set(agreement) == {"fp32", "static-percentile", "dynamic"} == set(report["speed"])
    assert agreement["fp32"]["batch_drift"] <= 1e-5 and agreement["fp32"]["top1_agreement"] == 1.0  # fp32's gate
    assert agreement["static-percentile"]["batch_drift"] <= 1e-4
    assert agreement["dynamic"]["batch_drift"] > 1e-3
    assert set(report["speed"]["dynamic"]) == {"1x16", "1x64", "32x64"}
    markdown = (tmp_path / "quant.md").read_text()
    assert "| dynamic |" in markdown and "max batch drift" in markdown and (tmp_path / "quant.json").exists()
