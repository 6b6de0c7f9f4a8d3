"""The lean per-call path (issue 9): spliced decoding, the one-text path and overlapped tokenization give
exactly what the tokenizer-based path gives. The speed itself is a bench row (host overhead per call)."""

import copy

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders

from deniro_rt import FillMask
from deniro_rt.data import mask_one_word, review_sentences
from deniro_rt.errors import DeniroError
from deniro_rt.runtime import Pieces


@pytest.fixture(scope="module")
def shipped():
    return FillMask(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def sentences(imdb_texts) -> list[str]:
    """IMDB test sentences with one word masked, plus some with two masks."""
    rng = np.random.default_rng(0)
    out = []
    for review in imdb_texts["test"][:300]:
        for sentence in review_sentences(review)[:2]:
            masked = mask_one_word(sentence, rng, "[MASK]")
            if masked:
                out.append(masked[0])
    two = [s.replace(" the ", " [MASK] ", 1) for s in out if " the " in s and "[MASK]" in s][:60]
    return out + two


def test_spliced_decoding_equals_the_tokenizer(shipped, sentences):
    """Every candidate sequence (normal words, '##' pieces, punctuation, specials that decode drops,
    ids past the vocabulary) is the string tokenizer.decode_batch gives."""
    rng = np.random.default_rng(1)
    specials = sorted(shipped.pieces.hidden) + [shipped.mask_id, shipped.manifest.vocab_size + 3]
    wordpieces = [i for t, i in shipped.tokenizer.get_vocab().items() if t.startswith("##")][:50]
    punctuation = [shipped.tokenizer.token_to_id(p) for p in (".", ",", "!", "?", "'", "s", "t", "not", "do")]
    checked = 0
    for encoding in shipped.tokenizer.encode_batch(sentences):
        ids = encoding.ids
        for position in [i for i, t in enumerate(ids) if t == shipped.mask_id]:
            tokens = rng.integers(0, shipped.manifest.vocab_size, 4).tolist() + [
                int(rng.choice(specials)),
                int(rng.choice(wordpieces)),
                int(rng.choice(punctuation)),
            ]
            filled = [np.array(ids[:position] + [t] + ids[position + 1 :]) for t in tokens]
            assert shipped.pieces.filled(ids, position, tokens) == shipped.tokenizer_decode_batch(filled), ids
            checked += len(tokens)
        assert shipped.pieces.decode(ids) == shipped.tokenizer_decode_batch([np.array(ids)])[0]
    assert checked > 5000


def test_the_first_position_and_empty_sequences(shipped):
    mask, cls, sep = shipped.mask_id, *shipped.tokenizer.encode("").ids
    hashes = shipped.tokenizer.token_to_id("##s")
    for ids in ([cls, mask, sep], [cls, mask, hashes, sep], [mask], [cls, sep, mask, 5, sep]):
        position = ids.index(mask)
        for token in (hashes, sep, 5, 7, mask):
            expected = shipped.tokenizer_decode_batch([np.array(ids[:position] + [token] + ids[position + 1 :])])[0]
            assert shipped.pieces.filled(ids, position, [token]) == [expected], (ids, token)


def test_one_text_path_equals_the_tokenizer_path(shipped, sentences):
    """fill(one text) through the lean path == the batch machinery with the tokenizer's own decode."""
    reference = copy.copy(shipped)
    reference.pieces = None  # decode_filled through tokenizer.decode_batch, as before issue 9
    for text in sentences[:80] + sentences[-20:]:
        lean = shipped.fill(text, top_k=6)
        assert lean == reference.fill(text, top_k=6) and [lean] == shipped.fill([text], top_k=6)
        batched = reference.fill([text, "a [MASK] ."], top_k=6)[0]  # padded to the longer text
        assert strip_scores(lean) == strip_scores(batched)


def strip_scores(result):
    per_mask = result if isinstance(result[0], list) else [result]
    return [[(p["token"], p["token_str"], p["sequence"]) for p in m] for m in per_mask]


def test_overlapped_tokenization_gives_the_same_answers(tiny_artifact, sentences):
    plain = FillMask(tiny_artifact, device="cpu", precision="fp32")
    overlapped = FillMask(tiny_artifact, device="cpu", precision="fp32", overlap=True, overlap_block=7)
    texts = [t for t in sentences if len(t) < 300][:60]
    a, b = plain.fill(texts, top_k=3, batch_size=5), overlapped.fill(texts, top_k=3, batch_size=5)
    flat = lambda results: [p for r in results for m in (r if isinstance(r[0], list) else [r]) for p in m]  # noqa: E731
    assert [(p["token"], p["sequence"]) for p in flat(a)] == [(p["token"], p["sequence"]) for p in flat(b)]
    np.testing.assert_allclose([p["score"] for p in flat(a)], [p["score"] for p in flat(b)], rtol=1e-5)


def test_overlapped_errors_name_the_global_index(tiny_artifact):
    overlapped = FillMask(tiny_artifact, device="cpu", precision="fp32", overlap=True, overlap_block=3)
    texts = ["a [MASK] ."] * 7 + ["no mask"] + ["b [MASK] ."] * 3
    with pytest.raises(DeniroError, match="text 7 has no"):
        overlapped.fill(texts)


def test_splicing_only_for_wordpiece_decoders(shipped):
    other = Tokenizer.from_str(shipped.tokenizer.to_str())
    other.decoder = decoders.Metaspace()
    assert Pieces.for_tokenizer(other, set(), str) is None
    assert Pieces.for_tokenizer(shipped.tokenizer, set(), str) is not None


def test_bench_host_reports_the_goal_ratios(tiny_artifact, imdb_dir, tmp_path):
    """python -m bench.host (issue 21): interleaved us/sentence of encode_batch, fill_arrays, fill and the graph."""
    from bench.host import HostConfig, main

    sizes = dict(batch=8, batches=2, repeats=1, overlap_block=3)
    result = main(HostConfig(model=str(tiny_artifact), dataset=str(imdb_dir), out=str(tmp_path), **sizes))
    assert set(result["us_per_sentence"]) == {"encode_batch", "arrays", "dicts", "model", "arrays-overlap"}
    assert result["sentences"] == 16 and 0 <= result["padding_fraction"] < 1
    assert result["ratios"]["arrays_vs_encode_batch"] == pytest.approx(
        result["us_per_sentence"]["arrays"] / result["us_per_sentence"]["encode_batch"]
    )
    assert result["ratios"]["arrays_overlap_vs_arrays"] == pytest.approx(
        result["us_per_sentence"]["arrays-overlap"] / result["us_per_sentence"]["arrays"]
    )
    md = (tmp_path / "host.md").read_text()
    assert "| arrays |" in md and "Overlapped pipeline (blocks of 3):" in md and (tmp_path / "host.png").exists()


def test_bench_host_refuses_bad_numbers_with_the_flag_named():
    from bench.host import parse_args

    with pytest.raises(DeniroError, match=r"^--batch must be at least 1, got 0$"):
        parse_args(["--batch", "0"])
    with pytest.raises(DeniroError, match=r"^--min-words 9 is above --max-words 4$"):
        parse_args(["--min-words", "9", "--max-words", "4"])
    assert parse_args(["--threads", "1"]).threads == 1 and parse_args([]).token_budget is None
