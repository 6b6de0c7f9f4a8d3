"""The model shipped inside the package (issue 12): the DeNiro recipe on a pretrained MiniLM, vocabulary
pruned to the 20,000 pieces IMDB uses most, weights stored as int8; offline, <= 20 MB, real English."""

import json

import onnx
from tokenizers import Tokenizer

import deniro_rt
from deniro_rt.artifact import load_manifest, verify_file
from deniro_rt.models import DEFAULT_MODEL_DIR

MOVIE_WORDS = {"movie", "film", "show", "documentary", "series", "story", "one", "flick", "picture"}
NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}
PACKAGE_CAP = 20_000_000  # issue 12: the GPU transfer carries the repo beside a 33 MB onnxruntime-gpu part


def test_shipped_model_is_complete_and_within_the_cap():
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    total = sum(verify_file(manifest, name).stat().st_size for name in manifest.files)
    total += (DEFAULT_MODEL_DIR / "deniro.json").stat().st_size
    assert total <= PACKAGE_CAP, f"shipped artifact is {total / 1e6:.2f} MB"
    assert set(manifest.graphs) == {"fp32"} and manifest.vocab_size == 20_000
    card = json.loads((DEFAULT_MODEL_DIR / "deniro.json").read_text())
    assert card["fused_ops"]["fp32"]["Attention"] == 6 and card["validation"]["fp32"]["passed"]
    rounding = card["weight_rounding"]
    assert rounding["passed"] and rounding["metrics"]["perplexity_rel_diff"] <= 0.01


def test_shipped_weights_are_stored_as_int8():
    graph = onnx.load(str(DEFAULT_MODEL_DIR / "fast.onnx")).graph
    int8 = sum(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    big_fp32 = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    assert int8 == 27 and big_fp32 == []  # table, positions, 6 x (QKV, out, FFN 1, FFN 2), vocab_transform


def test_model_card_prompt_gets_movie_words():
    [result] = deniro_rt.fill(["This is a great [MASK]!"], device="cpu")
    words = [p["token_str"] for p in result]
    assert len(words) == 5 and set(words[:2]) == {"movie", "film"} and len(MOVIE_WORDS & set(words)) >= 3, words


def test_rating_prompt_gets_five_numbers():
    """Issue 12's goal: the top 5 for a rating are all numbers (the shipped model: 10, ten, 8, three, 9)."""
    [result] = deniro_rt.fill(["I gave it [MASK] out of ten."], device="cpu")
    words = [p["token_str"] for p in result]
    assert words[0].isdigit() and all(w.isdigit() or w in NUMBER_WORDS for w in words), words


def test_shipped_tokenizer_keeps_whole_texts():
    tokenizer = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    assert tokenizer.truncation is None and tokenizer.padding is None
