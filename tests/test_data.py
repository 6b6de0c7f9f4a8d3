"""The torch-free data code shared by train/, export/, bench/ and the runtime."""

import math

import numpy as np
import pytest

from deniro_rt.data import (
    IGNORE_INDEX,
    NO_WORD,
    chunk_stream,
    chunk_texts,
    encode_stream,
    log_softmax,
    mask_one_word,
    masked_nll,
    perplexity,
    premask,
    review_sentences,
    whole_word_mask,
)
from deniro_rt.errors import DeniroError


@pytest.fixture(scope="module")
def backend(tiny_tokenizer):
    return tiny_tokenizer.backend_tokenizer


def test_chunks_keep_every_token_once_in_order(backend, imdb_texts):
    texts = imdb_texts["train"][:40]
    ids, word_ids = encode_stream(backend, texts)
    chunks = chunk_texts(backend, texts, chunk_size=64)
    n = len(chunks) * 64
    assert len(ids) - n < 64  # only an incomplete tail is dropped
    np.testing.assert_array_equal(chunks.input_ids.ravel(), ids[:n])
    np.testing.assert_array_equal(chunks.word_ids.ravel(), word_ids[:n])
    # every review contributes [CLS] ... [SEP], and the stream is exactly their concatenation
    per_text = [backend.encode(t).ids for t in texts]
    np.testing.assert_array_equal(ids, np.concatenate(per_text))


def test_word_ids_are_unique_across_documents(backend):
    ids, word_ids = encode_stream(backend, ["great movie", "great movie"])
    words = word_ids[word_ids != NO_WORD]
    assert list(words) == [0, 1, 2, 3]
    cls_id = backend.token_to_id("[CLS]")
    assert (word_ids[ids == cls_id] == NO_WORD).all()


def test_chunk_size_must_be_sensible():
    with pytest.raises(DeniroError, match="chunk size must be at least 2"):
        chunk_stream(np.arange(10), np.arange(10), 1)


def _masked(backend, texts, seed=0, p=0.15, chunk=128):
    chunks = chunk_texts(backend, texts, chunk)
    out = whole_word_mask(
        chunks.input_ids,
        chunks.word_ids,
        np.random.default_rng(seed),
        mask_token_id=4,
        vocab_size=600,
        mlm_probability=p,
    )
    return chunks, out


def test_whole_words_are_masked_together(backend, imdb_texts):
    chunks, out = _masked(backend, imdb_texts["train"][:200])
    scored = out.labels != IGNORE_INDEX
    multi_piece_words = 0
    for row in range(len(chunks)):
        words = chunks.word_ids[row]
        for w in np.unique(words[scored[row]]):
            pieces = words == w
            assert scored[row][pieces].all(), "a chosen word must have all its pieces scored"
            multi_piece_words += pieces.sum() > 1
    assert multi_piece_words > 50  # the check above really covered split words


def test_masking_rate_specials_and_labels(backend, imdb_texts):
    chunks, out = _masked(backend, imdb_texts["train"][:300])
    scored = out.labels != IGNORE_INDEX
    is_word = chunks.word_ids != NO_WORD
    assert not scored[~is_word].any(), "special tokens are never masked"
    # words, not tokens, are drawn at 15 %: the token rate is near it
    rate = scored.sum() / is_word.sum()
    assert 0.13 < rate < 0.17
    np.testing.assert_array_equal(out.labels[scored], chunks.input_ids[scored])
    assert (out.labels[~scored] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(out.input_ids[~scored], chunks.input_ids[~scored])
    masked_share = (out.input_ids[scored] == 4).mean()
    kept_share = (out.input_ids[scored] == chunks.input_ids[scored]).mean()
    assert 0.77 < masked_share < 0.83 and 0.08 < kept_share < 0.14  # 80 % [MASK]; 10 % kept (+ random hits)


def test_premask_is_identical_across_runs_and_seed_dependent(backend, imdb_texts):
    chunks = chunk_texts(backend, imdb_texts["test"][:50], 64)
    a = premask(chunks, seed=7, mask_token_id=4, vocab_size=600)
    b = premask(chunk_texts(backend, imdb_texts["test"][:50], 64), seed=7, mask_token_id=4, vocab_size=600)
    c = premask(chunks, seed=8, mask_token_id=4, vocab_size=600)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_perplexity_matches_hand_computation():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [5.0, 5.0, 5.0]])
    labels = np.array([0, 1, IGNORE_INDEX])
    nll, n = masked_nll(log_softmax(logits), labels)
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(1) / (1 + math.exp(1) + math.exp(3))
    expected = -(math.log(p0) + math.log(p1))
    assert n == 2 and nll == pytest.approx(expected, rel=1e-12)
    assert perplexity(nll, n) == pytest.approx(math.exp(expected / 2), rel=1e-12)
    with pytest.raises(DeniroError, match="at least one masked token"):
        perplexity(0.0, 0)


def test_sentence_workload_helpers():
    sentences = review_sentences("Great film.<br /><br />The cast was superb! Really?")
    assert sentences == ["Great film.", "The cast was superb!", "Really?"]
    masked, word = mask_one_word("The cast was superb!", np.random.default_rng(3))
    assert masked.count("[MASK]") == 1 and masked.replace("[MASK]", word) == "The cast was superb!"
    assert mask_one_word("a b !", np.random.default_rng(0)) is None


def test_local_parquet_loads_with_and_without_datasets(tmp_path, monkeypatch):
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from deniro_rt.data import load_text_splits

    pq.write_table(pa.table({"text": ["a<br />b", "c"], "label": [0, 1]}), tmp_path / "train.parquet")
    expected = {"train": ["a<br />b", "c"]}
    assert load_text_splits(str(tmp_path), ["train"]) == expected
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert load_text_splits(str(tmp_path), ["train"]) == expected
    with pytest.raises(DeniroError, match="has no test.parquet"):
        load_text_splits(str(tmp_path), ["train", "test"])
    with pytest.raises(DeniroError, match="needs the 'datasets' package"):
        load_text_splits("stanfordnlp/imdb", ["train"])


def test_local_parquet_splits_are_read_on_their_own_and_bad_ones_are_named(tmp_path):
    """Through `datasets` a test split with a column the train split lacked was a CastError, an empty file an
    ArrowInvalid and a damaged one a DatasetGenerationError traceback; numbers in the text column failed inside
    the tokenizer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deniro_rt.data import load_text_splits

    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "train.parquet")
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}), tmp_path / "test.parquet"
    )
    assert load_text_splits(str(tmp_path), ["train", "test"]) == {"train": ["a", "b"], "test": []}
    pq.write_table(pa.table({"text": ["a", None, "c"], "id": [1, 2, 3]}), tmp_path / "nulls.parquet")
    with pytest.raises(DeniroError) as caught:
        load_text_splits(str(tmp_path), ["nulls"])
    assert str(caught.value) == (
        f"dataset {str(tmp_path)!r} split 'nulls': 1 of 3 values of column 'text' are not text (rows 1; first: None); "
        "pass --text-column with the column of texts, or drop those rows"
    )
    pq.write_table(pa.table({"text": list(range(7))}), tmp_path / "numbers.parquet")
    with pytest.raises(
        DeniroError, match=r"7 of 7 values of column 'text' are not text \(rows 0, 1, 2, 3, 4, \.\.\.; "
    ):
        load_text_splits(str(tmp_path), ["numbers"])
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes((tmp_path / "train.parquet").read_bytes()[:100])
    with pytest.raises(DeniroError) as caught:
        load_text_splits(str(tmp_path), ["damaged"])
    assert str(caught.value).startswith(f"dataset file {damaged} is not readable as parquet (")
    assert str(caught.value).endswith("); replace it with the split's .parquet file")
