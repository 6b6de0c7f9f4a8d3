"""deniro_rt against transformers' own FillMaskPipeline on adversarial text: accents (NFC and NFD), CJK, emoji,
zero-width and control characters, odd whitespace, over-long words ([UNK]), masks next to punctuation or each
other, first or last, targets spelled as vocabulary pieces.

The pipeline runs the shipped model rebuilt in PyTorch from its graph (export.reference.model_from_graph, as
tests/data/make_shipped_reference.py does). Compared: token ids (a swap forgiven between near-ties), scores,
token_str and sequence. The one documented difference: a text with several masks has no [CLS]/[SEP] in its
sequences (transformers decodes those with skip_special_tokens=False), so they are stripped before comparing.
"""

from __future__ import annotations

import logging

import pytest

from deniro_rt import FillMask
from deniro_rt.models import DEFAULT_MODEL_DIR

SCORE_TOL = 1e-4  # relative; fp32 log-probs agree with PyTorch's to about 1e-5
TEXTS = [
    "café [MASK] naïve",
    "cafe\u0301 [MASK] nai\u0308ve",  # NFD: combining accents
    "I love 東京 [MASK].",  # CJK: each character its own token, [UNK] here
    "so 😀 [MASK] 🎬",  # emoji: [UNK]
    "a\u200b[MASK]\u200dword",  # zero-width space and joiner
    "a\u0007b [MASK] \u0000c",  # control characters
    "tab\there [MASK]\nnew\u00a0line",
    "super" + "x" * 150 + " was [MASK].",  # one word past max_input_chars_per_word: [UNK]
    "x[MASK]y",
    "[MASK] is great.",
    "it was [MASK]",
    "[MASK]",
    "[UNK] [MASK]",
    "the [SEP] [MASK] [CLS] x",
    "ＦＵＬＬ ｗｉｄｔｈ [MASK]",
    "the movie wasn't [MASK] , i don't know .",
    'he said "[MASK]" (really)?',
    "[MASK][MASK] it",
    "[MASK]-[MASK]",
    "the [MASK] was [MASK] .",
]


@pytest.fixture(scope="module")
def pipe():
    from transformers import AutoTokenizer, pipeline

    from export.reference import model_from_graph

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    return pipeline("fill-mask", model=model_from_graph(DEFAULT_MODEL_DIR), tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def fm():
    return FillMask(DEFAULT_MODEL_DIR, device="cpu", precision="fp32")


def per_mask(result: list) -> list[list[dict]]:
    return result if result and isinstance(result[0], list) else [result]


def without_edges(sequence: str) -> str:
    """transformers' multi-mask sequence with its [CLS]/[SEP] dropped (deniro's documented form)."""
    return sequence.removeprefix("[CLS]").removesuffix("[SEP]").strip()


def assert_same_answers(got: list, want: list, text: str) -> None:
    several = len(per_mask(want)) > 1
    for n, (mine, theirs) in enumerate(zip(per_mask(got), per_mask(want), strict=True)):
        by_token = {p["token"]: p for p in theirs}
        for rank, (p, q) in enumerate(zip(mine, theirs, strict=True)):
            tie = p["token"] in by_token and abs(by_token[p["token"]]["score"] - q["score"]) <= SCORE_TOL * q["score"]
            assert p["token"] == q["token"] or tie, f"{text!r} mask {n} rank {rank}: {p['token']} vs {q['token']}"
            q = by_token[p["token"]]
            assert abs(p["score"] - q["score"]) <= SCORE_TOL * q["score"] + 1e-9, (text, n, rank)
            sequence = without_edges(q["sequence"]) if several else q["sequence"]
            assert (p["token_str"], p["sequence"]) == (q["token_str"], sequence), (text, n, rank)


@pytest.mark.parametrize("text", TEXTS)
def test_fill_equals_the_transformers_pipeline(text, fm, pipe):
    """A one-mask text with [UNK]s (emoji, CJK, long words) showed them in `sequence`, and a special
    candidate ([UNK], [MASK]) too: transformers decodes such a text with skip_special_tokens=True."""
    want = pipe(text, top_k=5)
    assert_same_answers(fm.fill(text, top_k=5), want, text)
    assert_same_answers(fm.fill([text, "a [MASK] ."], top_k=5)[0], want, text)  # the batched path
    assert_same_answers(fm.fill_arrays([text], top_k=5).to_dicts()[0], want, text)


def test_whole_vocabulary_sequences_equal_transformers(fm, pipe):
    """top_k = the vocabulary: every candidate, [PAD]/[UNK]/[CLS]/[SEP]/[MASK] included."""
    text = "so 😀 [MASK]."
    want = {p["token"]: p for p in pipe(text, top_k=fm.manifest.vocab_size)}
    got = fm.fill(text, top_k=fm.manifest.vocab_size)
    assert sorted(p["token"] for p in got) == sorted(want)
    wrong = [(p["token"], p["sequence"]) for p in got if p["sequence"] != want[p["token"]]["sequence"]]
    assert wrong == []


@pytest.mark.parametrize("text", ["the [UNK] [MASK] .", "東 [MASK] [MASK]"])
def test_several_masks_keep_unk_as_transformers_does(text, fm, pipe):
    """With several masks transformers keeps special tokens in `sequence` (its other masks stay visible)."""
    assert_same_answers(fm.fill(text, top_k=3), pipe(text, top_k=3), text)


@pytest.mark.parametrize("text", ["This is a great [MASK]!", "so 😀 a [MASK]!", "the [MASK] was [MASK] ."])
def test_targets_equal_transformers_for_one_piece_words(text, fm, pipe, caplog):
    for targets in (["Movie", "movie"], ["café", "naïve"], ["MOVIE", "Film"], ["  movie "], ["masterpiece"]):
        with caplog.at_level(logging.ERROR, logger="transformers"):
            want = pipe(text, targets=targets)
        assert_same_answers(fm.fill(text, targets=targets), want, f"{text} targets={targets}")


def test_a_target_spelled_as_a_vocabulary_piece_is_that_piece(fm, pipe):
    """'##s' (what token_str gives for a word piece) was tokenized as '#', '#', 's' and scored as a 3-piece
    word; transformers looks a target up in the vocabulary first, so a returned token_str ranks as itself."""
    text = "This is a great [MASK]!"
    assert_same_answers(fm.fill(text, targets=["##s", "##ing"]), pipe(text, targets=["##s", "##ing"]), text)
    pieces = [p for p in fm.fill(text, top_k=fm.manifest.vocab_size) if p["token_str"].startswith("##")][:3]
    again = {p["token"]: p["score"] for p in fm.fill(text, targets=[p["token_str"] for p in pieces])}
    assert again == pytest.approx({p["token"]: p["score"] for p in pieces}, rel=1e-6)


@pytest.fixture(scope="module")
def cleaning_artifact(tmp_path_factory):
    """The shipped artifact with clean_up_tokenization_spaces set in its tokenizer_config.json, as many BERT
    checkpoints saved by transformers < 4.45 have it (the manifest's hash updated)."""
    import json
    import shutil

    from deniro_rt.artifact import MANIFEST, sha256_file

    TOKENIZER_CONFIG = "tokenizer_config.json"  # noqa: N806

    folder = tmp_path_factory.mktemp("cleaning") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    config = json.loads((folder / TOKENIZER_CONFIG).read_text())
    (folder / TOKENIZER_CONFIG).write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][TOKENIZER_CONFIG] = sha256_file(folder / TOKENIZER_CONFIG)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


CONTRACTIONS = ["it's a [MASK] movie, isn't it?", "i don't [MASK] it ' s", "we're [MASK] and they've gone ."]


@pytest.mark.parametrize("text", CONTRACTIONS + ["the [MASK] wasn't [MASK] ."])
def test_clean_up_tokenization_spaces_is_honoured(text, cleaning_artifact, pipe):
    """transformers' decode() cleans the whole string when the tokenizer's config says so ("it ' s" ->
    "it's"); deniro ignored the setting and showed "it ' s"."""
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(cleaning_artifact)
    assert tokenizer.clean_up_tokenization_spaces
    cleaning = pipeline("fill-mask", model=pipe.model, tokenizer=tokenizer, device="cpu")
    fm = FillMask(cleaning_artifact, device="cpu", precision="fp32")
    want = cleaning(text, top_k=3)
    assert_same_answers(fm.fill(text, top_k=3), want, text)
    assert_same_answers(fm.fill([text, "a [MASK] ."], top_k=3)[0], want, text)
    assert_same_answers(fm.fill_arrays([text], top_k=3).to_dicts()[0], want, text)


def test_without_the_setting_sequences_keep_the_tokenizers_spacing(fm):
    """The shipped tokenizer_config says false: as in transformers, no second cleanup."""
    assert "it ' s" in fm.fill(CONTRACTIONS[0], top_k=1)[0]["sequence"]
    two_pieces = fm.fill("the [MASK] .", targets=["don't"])[0]
    assert two_pieces["token_str"] == "don ' t"
