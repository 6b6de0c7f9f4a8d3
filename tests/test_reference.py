"""deniro_rt against references it did not compute: PyTorch's answers kept beside the artifact
(reference.json, tests/data/shipped-reference.json), and transformers run here on real IMDB sentences for
truncation, joint fill and int8.

Tolerances: fp32 log-probs within LOGPROB_TOL of PyTorch's (measured: 1.05e-5 on the shipped model, 43
masks; the export's own fp32 gate is a relative logit difference of 1e-4); ids equal at every rank, a swap
forgiven only between two ids PyTorch scores within LOGPROB_TOL of each other (a rounding-level tie).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from deniro_rt import FillMask
from deniro_rt.artifact import FAST_GRAPHS, load_manifest
from deniro_rt.data import review_sentences
from deniro_rt.models import DEFAULT_MODEL_DIR

SHIPPED_REFERENCE = Path(__file__).parent / "data" / "shipped-reference.json"
LOGPROB_TOL = 1e-4
WORD = re.compile(r"\b[a-zA-Z]{3,}\b")


def assert_matches_reference(record: dict, fm: FillMask) -> None:
    """fill() on the record's texts gives its ids and log-probs, mask by mask."""
    results = fm.fill(record["texts"], top_k=record["top_k"])
    for text, expected, result in zip(record["texts"], record["masks"], results):
        per_mask = result if isinstance(result[0], list) else [result]
        assert len(per_mask) == len(expected), text
        for got, ref in zip(per_mask, expected):
            ref_lp = dict(zip(ref["ids"], ref["logprobs"]))
            for rank, p in enumerate(got):
                lp = float(np.log(p["score"]))
                same_rank = p["token"] == ref["ids"][rank]
                tie = p["token"] in ref_lp and abs(ref_lp[p["token"]] - ref["logprobs"][rank]) <= LOGPROB_TOL
                assert same_rank or tie, f"{text!r} rank {rank}: {p['token']} vs reference {ref['ids']}"
                if p["token"] in ref_lp:
                    assert abs(lp - ref_lp[p["token"]]) <= LOGPROB_TOL, f"{text!r} id {p['token']}: {lp}"


# ---------------------------------------------------------------------- kept references
def test_shipped_model_matches_its_pytorch_reference():
    """The shipped model against PyTorch top-10s made by tests/data/make_shipped_reference.py."""
    record = json.loads(SHIPPED_REFERENCE.read_text())
    shipped = load_manifest(DEFAULT_MODEL_DIR).files[FAST_GRAPHS["fp32"]]
    assert record["graph_sha256"] == shipped, (
        "the shipped model changed: rerun python tests/data/make_shipped_reference.py"
    )
    assert record["mapping_check"]["passed"] and len(record["texts"]) >= 30 and record["top_k"] == 10
    assert sum(len(m) for m in record["masks"]) > len(record["texts"])  # some texts have several masks
    assert_matches_reference(record, FillMask(DEFAULT_MODEL_DIR, device="cpu", precision="fp32"))


def test_export_keeps_pytorch_answers_beside_the_artifact(tiny_artifact, tiny_model, tiny_tokenizer):
    from export.reference import REFERENCE_FILE, reference

    record = json.loads((tiny_artifact / REFERENCE_FILE).read_text())
    assert REFERENCE_FILE in load_manifest(tiny_artifact).files  # hashed like the graphs
    assert {k: record[k] for k in ("top_k", "texts", "masks")} == reference(tiny_model, tiny_tokenizer)
    assert_matches_reference(record, FillMask(tiny_artifact, device="cpu", precision="fp32"))


def test_the_comparison_sees_a_wrong_answer(tiny_artifact):
    from export.reference import REFERENCE_FILE

    record = json.loads((tiny_artifact / REFERENCE_FILE).read_text())
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    record["masks"][3][0]["logprobs"][0] -= 10 * LOGPROB_TOL
    with pytest.raises(AssertionError, match=f"id {record['masks'][3][0]['ids'][0]}"):
        assert_matches_reference(record, fm)


def test_model_from_graph_rebuilds_the_exact_weights(tiny_artifact, tiny_model):
    """The ONNX -> transformers mapping that made the shipped reference, on a model whose weights we have."""
    from export.reference import model_from_graph

    rebuilt, true = model_from_graph(tiny_artifact).state_dict(), tiny_model.state_dict()
    assert set(rebuilt) == set(true)
    assert [name for name in true if not np.array_equal(rebuilt[name].numpy(), true[name].numpy())] == []


# ---------------------------------------------------------------------- transformers on real sentences
@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def fm(tiny_artifact):
    return FillMask(tiny_artifact, device="cpu", precision="fp32")


def mask_words(sentence: str, n: int, rng: np.random.Generator) -> str | None:
    """`sentence` with `n` distinct words of 3+ letters (chosen by `rng`) replaced by [MASK]."""
    words = list(WORD.finditer(sentence))
    if len(words) < n:
        return None
    for match in sorted((words[i] for i in rng.choice(len(words), n, replace=False)), key=lambda m: -m.start()):
        sentence = sentence[: match.start()] + "[MASK]" + sentence[match.end() :]
    return sentence


def imdb_sentences(imdb_texts, n: int, masks: int, seed: int, words: tuple[int, int] = (6, 25)) -> list[str]:
    rng, found = np.random.default_rng(seed), []
    for review in imdb_texts["test"]:
        for sentence in review_sentences(review):
            masked = mask_words(sentence, masks, rng) if words[0] <= len(sentence.split()) <= words[1] else None
            if masked:
                found.append(masked)
                break
        if len(found) == n:
            return found
    pytest.fail(f"only {len(found)} sentences with {masks} masks in the IMDB sample")


def torch_log_probs(model, ids: list[int]):
    """[seq, vocab] float32 log-probs of `model` on one unpadded row."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)


def kept_window(ids: list[int], mask_id: int, max_len: int) -> tuple[int, list[int], list[int]]:
    """What truncation documents, written out: [CLS] + max_len - 2 tokens centred on the masks (clipped to
    the text) + [SEP]; when the masks do not fit together it starts an eighth of the window before the
    first mask (clipped too). Returns (start in the text without [CLS], the window's ids, mask positions in
    that text)."""
    inner, budget = ids[1:-1], max_len - 2
    masks = [p for p, t in enumerate(inner) if t == mask_id]
    if masks[-1] - masks[0] < budget:
        start = max((masks[0] + masks[-1]) // 2 - budget // 2, masks[-1] - budget + 1)  # the last mask inside
    else:
        start = masks[0] - budget // 8
    start = min(max(start, 0), len(inner) - budget)
    return start, [ids[0], *inner[start : start + budget], ids[-1]], masks


def masked_review(review: str, picks: list[int]) -> str:
    words = list(WORD.finditer(review))
    for i in sorted((i % len(words) for i in picks), reverse=True):
        review = review[: words[i].start()] + "[MASK]" + review[words[i].end() :]
    return review


@pytest.mark.parametrize("picks", [[2], [150], [-3], [3, -3]], ids=["start", "middle", "end", "far-apart"])
def test_truncation_equals_transformers_on_the_kept_window(picks, fm, tiny_model, tiny_tokenizer, imdb_texts):
    """Long real reviews, masks near the start, middle, end, and two far apart (the second cut away)."""
    reviews = [r for r in imdb_texts["test"] if len(tiny_tokenizer(r)["input_ids"]) > 400][:4]
    max_len, budget = fm.manifest.max_positions, fm.manifest.max_positions - 2
    for review in reviews:
        text = masked_review(review, picks)
        start, window, masks = kept_window(tiny_tokenizer(text)["input_ids"], tiny_tokenizer.mask_token_id, max_len)
        lost = [n for n, m in enumerate(masks) if not start <= m < start + budget]
        assert len(window) == max_len and len(lost) == (len(picks) - 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fm.fill(text, truncation=True, top_k=5)
        assert len(caught) == (1 if lost else 0)
        per_mask = got if isinstance(got[0], list) else [got]
        logp = torch_log_probs(tiny_model, window)
        for n, mask in enumerate(masks):
            if n in lost:
                assert per_mask[n] == [], f"mask {n} lies outside the window"
                continue
            top = logp[1 + mask - start].topk(5)
            assert [p["token"] for p in per_mask[n]] == top.indices.tolist(), (text[:80], picks, n)
            np.testing.assert_allclose(
                np.log([p["score"] for p in per_mask[n]]), top.values.numpy(), atol=LOGPROB_TOL, rtol=0
            )


def greedy_joint(model, ids: list[int], mask_id: int) -> tuple[list[int], float]:
    """transformers greedy joint fill: fill the mask whose best token is most likely, re-run, repeat.
    Returns the tokens in text order and the summed log-prob of the picks."""
    ids, picks, total = list(ids), {}, 0.0
    while mask_id in ids:
        logp = torch_log_probs(model, ids)
        open_masks = [p for p, t in enumerate(ids) if t == mask_id]
        best_lp, best_id = logp[open_masks].max(-1)  # [n_open] each
        chosen = int(best_lp.argmax())
        ids[open_masks[chosen]] = picks[open_masks[chosen]] = int(best_id[chosen])
        total += float(best_lp[chosen])
    return [picks[p] for p in sorted(picks)], total


def test_joint_fill_equals_a_greedy_loop_in_transformers(fm, tiny_model, tiny_tokenizer, imdb_texts):
    texts = imdb_sentences(imdb_texts, 6, masks=2, seed=3) + imdb_sentences(imdb_texts, 6, masks=3, seed=4)
    results = fm.fill(texts, joint=True)
    for text, result in zip(texts, results):
        tokens, logprob = greedy_joint(tiny_model, tiny_tokenizer(text)["input_ids"], tiny_tokenizer.mask_token_id)
        assert result["tokens"] == tokens, text  # every pick, in text order
        assert np.log(result["score"]) == pytest.approx(logprob, abs=len(tokens) * LOGPROB_TOL)
        assert "[MASK]" not in result["sequence"]
        assert result["token_strs"] == [fm.token_str(t) for t in tokens]


def test_int8_agrees_with_fp32_as_the_export_requires(tiny_artifact, fm, imdb_texts):
    """fill() with the int8 graph against fp32 on 200 real IMDB sentences (one word masked), judged by the
    export's own int8 gate on top-1 agreement."""
    from export.validate import THRESHOLDS

    texts = imdb_sentences(imdb_texts, 200, masks=1, seed=5)
    int8 = FillMask(tiny_artifact, device="cpu", precision="int8")
    fp32_top1 = [r[0]["token"] for r in fm.fill(texts, top_k=1)]
    int8_top1 = [r[0]["token"] for r in int8.fill(texts, top_k=1)]
    agreement = float(np.mean([a == b for a, b in zip(fp32_top1, int8_top1)]))
    op, bound = THRESHOLDS["int8"]["top1_agreement"]
    assert op == ">=" and agreement >= bound, f"int8 top-1 agrees with fp32 on {agreement:.1%} of 200"
