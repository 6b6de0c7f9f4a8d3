"""fill_arrays (issue 21): the columnar result equals fill, and the NumPy host path equals the per-text one.

The reference below is the per-text path that fill used before the columnar API (tokenizer.encode_batch,
FillMask.score's per-row feed builder, the tokenizer's own decode): the new path must give the same token
ids and the same scores, bit for bit (same batches), and to_dicts must give fill's output exactly.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import deniro_rt
from deniro_rt import FillMask
from deniro_rt.data import mask_one_word, review_sentences
from deniro_rt.errors import DeniroError
from deniro_rt.runtime import CPU_TOKEN_BUDGET, length_chunks, padding_fraction, restore_dropped


@pytest.fixture(scope="module")
def shipped():
    return FillMask(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def sentences(imdb_texts) -> list[str]:
    """IMDB test sentences (3-60 words) with one word masked, every fifth with a second mask."""
    rng = np.random.default_rng(21)
    out = []
    for review in imdb_texts["test"][:120]:
        for sentence in [s for s in review_sentences(review) if 3 <= len(s.split()) <= 60][:2]:
            masked = mask_one_word(sentence, rng, "[MASK]")
            if masked:
                out.append(masked[0])
    return [s.replace(" the ", " [MASK] ", 1) if i % 5 == 0 else s for i, s in enumerate(out)]


def reference_fill(fm: FillMask, texts: list[str], top_k: int, batch_size: int, truncation: bool = False):
    """fill's output through the per-text path: encode_batch ids, FillMask.score, the tokenizer's decode."""
    encodings = fm.tokenizer.encode_batch(texts)
    windowed, lost = fm.encode(texts, truncation)
    for enc, ids in zip(encodings, windowed):  # the flat encode_batch_fast rows are encode_batch's ids
        assert len(enc.ids) > fm.manifest.max_positions or enc.ids == ids.tolist()
    results = []
    for ids, scored, cut in zip(windowed, fm.score(windowed, top_k=top_k, batch_size=batch_size), lost):
        per_mask = []
        for position, lp, tokens in zip(np.flatnonzero(ids == fm.mask_id), scored.topk_logprobs, scored.topk_ids):
            filled = [np.concatenate([ids[:position], [t], ids[position + 1 :]]) for t in tokens]
            per_mask.append(
                [
                    {
                        "score": float(np.exp(np.float64(p))),
                        "token": int(t),
                        "token_str": fm.tokenizer.decode([int(t)], skip_special_tokens=False),
                        "sequence": q,
                    }
                    for p, t, q in zip(lp, tokens, fm.tokenizer_decode_batch(filled))
                ]
            )
        results.append(restore_dropped(per_mask, cut))
    return results


def test_columns_and_dicts_equal_the_per_text_path(shipped, sentences):
    assert len(sentences) > 150 and sum(s.count("[MASK]") > 1 for s in sentences) > 20
    preds = shipped.fill_arrays(sentences, top_k=4, batch_size=16)
    reference = reference_fill(shipped, sentences, top_k=4, batch_size=16)
    assert preds.to_dicts() == reference == shipped.fill(sentences, top_k=4, batch_size=16)
    n_masks = sum(s.count("[MASK]") for s in sentences)
    assert preds.token_ids.shape == preds.scores.shape == (n_masks, 4) and preds.token_ids.dtype == np.int64
    assert preds.text_index.tolist() == [t for t, s in enumerate(sentences) for _ in range(s.count("[MASK]"))]
    encoded = shipped.tokenizer.encode_batch(sentences)
    positions = [p for e in encoded for p, t in enumerate(e.ids) if t == shipped.mask_id]
    assert preds.mask_position.tolist() == positions
    flat = [p for r in reference for m in (r if isinstance(r[0], list) else [r]) for p in m]
    assert preds.token_strs().ravel().tolist() == [p["token_str"] for p in flat]


def test_one_text_paths(shipped, sentences):
    for text in sentences[:10]:
        assert shipped.fill_arrays(text, top_k=3).to_dicts() == shipped.fill(text, top_k=3)
        assert shipped.fill_arrays([text], top_k=3).to_dicts() == shipped.fill([text], top_k=3)
        assert shipped.fill(text, top_k=3) == reference_fill(shipped, [text], 3, 1)[0]
    assert len(shipped.fill_arrays([])) == 0 and shipped.fill_arrays([]).to_dicts() == []


def test_truncation_rows(tiny_artifact, sentences):
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    filler = "the movie was long and slow . " * 40  # > 128 tokens (the tiny model's maximum)
    far = "[MASK] was the first word . " + filler + "the ending was [MASK] ."
    texts = [sentences[0], far, filler + "it was [MASK] .", sentences[5], far]
    with pytest.warns(UserWarning) as caught:
        preds = fm.fill_arrays(texts, top_k=3, batch_size=2, truncation=True)
    assert [str(w.message) for w in caught] == [  # one warning per call, texts numbered in the list passed
        "masks of 2 texts lie outside the 128-token window kept by truncation (0-based: text 1 masks [1], text 4 "
        "masks [1]); their predictions are empty lists"
    ]
    assert preds.to_dicts() == reference_fill(fm, texts, 3, 2, truncation=True)
    cut = preds.mask_position < 0  # the second mask of each `far` text
    assert preds.text_index[cut].tolist() == [1, 4] and (preds.token_ids[cut] == -1).all()
    assert np.isnan(preds.scores[cut]).all() and (preds.token_strs()[cut] == "").all()
    table = preds.to_arrow()
    assert table.column("token_ids").to_pylist()[int(np.flatnonzero(cut)[0])] == []


def test_truncation_warns_once_per_call_naming_the_first_texts(tiny_artifact, sentences):
    """A text whose masks truncation cut away was one warning each (100k texts: 100k lines); now a call warns
    once, with the count and the first texts by their place in the list passed, across overlapped blocks too."""
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32", overlap=True, overlap_block=3)
    far = "[MASK] was the first word . " + "the movie was long and slow . " * 40 + "the ending was [MASK] ."
    texts = [sentences[i] if i % 2 else far for i in range(15)]  # cut: texts 0, 2, ..., 14
    with pytest.warns(UserWarning) as caught:
        preds = fm.fill_arrays(texts, top_k=2, batch_size=2, truncation=True)
    assert [str(w.message) for w in caught] == [
        "masks of 8 texts lie outside the 128-token window kept by truncation (0-based: text 0 masks [1], text 2 "
        "masks [1], text 4 masks [1], text 6 masks [1], text 8 masks [1], and 3 more texts); their predictions "
        "are empty lists"
    ]
    assert preds.text_index[preds.mask_position < 0].tolist() == list(range(0, 15, 2))  # kept in the output
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the batch job reports input rows itself: no warning at all
        quiet = fm.fill_arrays(texts, top_k=2, batch_size=2, truncation=True, warn_truncated=False)
    assert quiet.to_dicts() == preds.to_dicts()


@pytest.mark.parametrize(
    "texts, message",
    [
        (["a fine [MASK] .", "no mask here"], "text 1 has no [MASK]: 'no mask here'; put [MASK]"),
        (["this is [mask] ."], "text 0 has no [MASK]: 'this is [mask] .' (the mask token is case-sensitive"),
        (["ok [MASK]", "   "], "text 1 is empty"),
        (None, "texts is None"),
        (["ok [MASK]", 3], "text 1 is int, expected a string"),
        (["ok [MASK]", "good " * 600 + "[MASK]"], "text 1 is 603 tokens, more than the model's maximum of 512"),
        (["no mask", "good " * 600 + "[MASK]"], "text 0 has no [MASK]"),
    ],
)
def test_bad_input_as_in_fill(shipped, texts, message):
    with pytest.raises(DeniroError) as ours:
        shipped.fill_arrays(texts)
    with pytest.raises(DeniroError) as theirs:
        shipped.fill(texts)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)
    assert message in str(ours.value)
    with pytest.raises(DeniroError, match="top_k must be a positive integer, got 0"):
        shipped.fill_arrays("a [MASK]", top_k=0)


def test_to_arrow_columns(shipped, sentences):
    preds = shipped.fill_arrays(sentences[:12], top_k=2)
    table = preds.to_arrow(sequences=True)
    assert table.column_names == ["text_index", "mask_position", "token_ids", "token_strs", "scores", "sequences"]
    assert table.column("token_ids").to_pylist() == preds.token_ids.tolist()
    assert table.column("scores").to_pylist() == preds.scores.tolist()
    assert table.column("token_strs").to_pylist() == preds.token_strs().tolist()
    rows = [m for r in preds.to_dicts() for m in (r if isinstance(r[0], list) else [r])]
    assert table.column("sequences").to_pylist() == [[p["sequence"] for p in m] for m in rows]
    assert "sequences" not in preds.to_arrow().column_names


def test_overlapped_blocks_join_in_order(tiny_artifact, sentences):
    plain = FillMask(tiny_artifact, device="cpu", precision="fp32")
    overlapped = FillMask(tiny_artifact, device="cpu", precision="fp32", overlap=True, overlap_block=7)
    texts = [t for t in sentences if len(t) < 300][:40]
    a, b = plain.fill_arrays(texts, top_k=3, batch_size=5), overlapped.fill_arrays(texts, top_k=3, batch_size=5)
    assert a.text_index.tolist() == b.text_index.tolist() and (a.token_ids == b.token_ids).all()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    assert a.sequences() == b.sequences() and len(a.to_dicts()) == len(b.to_dicts()) == len(texts)
    with pytest.raises(DeniroError, match="text 9 has no"):
        overlapped.fill_arrays(texts[:9] + ["no mask"] + texts[:5])


def test_padding_fraction():
    assert padding_fraction(np.array([4, 4, 4, 4]), 2) == 0.0
    assert padding_fraction(np.array([2, 4, 4, 2]), 2) == 0.0  # sorted first: [2, 2] and [4, 4]
    assert padding_fraction(np.array([2, 4, 3]), 3) == pytest.approx(1 - 9 / 12)


def test_length_chunks_keep_batch_size_and_token_budget():
    ordered = np.array([3, 3, 4, 5, 8, 9, 30, 40])  # sorted lengths
    runs = [(r.start, r.stop) for r in length_chunks(ordered, 4, 16)]
    assert runs == [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]  # 3 rows x 4 = 12 <= 16; a 30-token row runs alone
    assert [(r.start, r.stop) for r in length_chunks(ordered, 4)] == [(0, 4), (4, 8)]  # no budget
    assert padding_fraction(ordered, 4, 16) == pytest.approx(1 - 102 / (12 + 16 + 9 + 30 + 40))
    with pytest.raises(DeniroError, match="batch_size must be a whole number >= 1, got 0"):
        length_chunks(ordered, 0)


def test_a_token_budget_never_lets_a_run_exceed_batch_size():
    """Short rows under a roomy budget: batch_size still caps every run (the budget only ever splits further)."""
    ordered = np.full(10, 3)  # 10 rows of 3 tokens: 30 tokens, far under the budget
    assert [(r.start, r.stop) for r in length_chunks(ordered, 4, 1000)] == [(0, 4), (4, 8), (8, 10)]
    assert [(r.start, r.stop) for r in length_chunks(ordered, 4, 9)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [(r.start, r.stop) for r in length_chunks(np.array([50]), 4, 9)] == [(0, 1)]  # one row at least


def test_token_budget_splits_runs_without_changing_an_answer(shipped, sentences):
    """CPU default: CPU_TOKEN_BUDGET padded tokens a run (big batches ran 1.9x slower a sentence); the runs are
    smaller than batch_size, the answers the same to the bit."""
    assert shipped.token_budget == CPU_TOKEN_BUDGET
    unbounded = FillMask(device="cpu", precision="fp32", token_budget=0)
    small = FillMask(device="cpu", precision="fp32", token_budget=64)
    calls = {"unbounded": [], "small": []}  # [batch, seq] of every graph run

    def counted(run, shapes):
        return lambda feed: shapes.append(feed["input_ids"].shape) or run(feed)

    for name, fm in (("unbounded", unbounded), ("small", small)):
        fm._run = counted(fm._run, calls[name])
    got, want = small.fill_arrays(sentences, batch_size=512), unbounded.fill_arrays(sentences, batch_size=512)
    assert np.array_equal(got.token_ids, want.token_ids) and np.array_equal(got.scores, want.scores)
    assert len(calls["unbounded"]) == 1 and len(calls["small"]) > 5
    assert all(rows == 1 or rows * seq <= 64 for rows, seq in calls["small"])
    with pytest.raises(DeniroError, match="token_budget must be a whole number >= 0 .* got -1"):
        FillMask(device="cpu", token_budget=-1)


def test_the_columnar_path_imports_no_pyarrow(tiny_artifact):
    code = (
        f"import sys, deniro_rt; p = deniro_rt.fill_arrays(['a [MASK] .', 'the [MASK] end'], "
        f"model={str(tiny_artifact)!r}, device='cpu'); p.token_strs(); p.to_dicts(); "
        f"sys.exit('pyarrow imported' if 'pyarrow' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert deniro_rt.fill_arrays("a [MASK] .", model=tiny_artifact, device="cpu").to_dicts() == deniro_rt.fill(
        "a [MASK] .", model=tiny_artifact, device="cpu"
    )
