"""deniro's errors are the conventional Python types: bad values are ValueError, wrong types TypeError."""

from __future__ import annotations

import re

import numpy as np
import pytest

import deniro_rt
from deniro_rt import ArtifactError, DeniroError, DeniroTypeError, TextError, TooLongError


@pytest.fixture(scope="module")
def fm():
    return deniro_rt.FillMask(device="cpu", precision="fp32")  # the shipped model: offline, small


def test_hierarchy():
    assert issubclass(DeniroError, ValueError) and not issubclass(DeniroError, TypeError)
    assert issubclass(DeniroTypeError, DeniroError) and issubclass(DeniroTypeError, TypeError)
    assert issubclass(ArtifactError, DeniroError)
    assert {"DeniroError", "DeniroTypeError", "ArtifactError"} <= set(deniro_rt.__all__)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda fm: fm.fill(None),
            "texts is None; pass a string or a list of strings, each with [MASK] where a word should be predicted",
        ),
        (lambda fm: fm.fill(42), "texts must be a string or a list of strings, got int"),
        (lambda fm: fm.fill({"a [MASK]"}), "texts must be a string or a list of strings, got set"),
        (lambda fm: fm.fill(["ok [MASK]", 3]), "text 1 is int, expected a string with [MASK]"),
        (lambda fm: fm.fill(["ok [MASK]", b"a [MASK]"]), "text 1 is bytes, expected a string with [MASK]"),
        (lambda fm: fm.fill("a [MASK]", top_k=2.0), "top_k must be a positive integer, got 2.0"),
        (lambda fm: fm.fill("a [MASK]", top_k="5"), "top_k must be a positive integer, got '5'"),
        (lambda fm: fm.fill("a [MASK]", top_k=True), "top_k must be a positive integer, got True"),
        (lambda fm: fm.fill("a [MASK]", targets=7), "targets must be a non-empty list of non-empty strings, got 7"),
        (
            lambda fm: fm.fill("a [MASK]", targets=["movie", None]),
            "targets must be a non-empty list of non-empty strings, got ['movie', None]",
        ),
        (lambda fm: fm.fill("a [MASK]", batch_size=2.0), "batch_size must be a whole number >= 1, got 2.0"),
        (lambda fm: fm.fill_arrays(["a [MASK]"], batch_size=None), "batch_size must be a whole number >= 1, got None"),
        # a list reached the session cache and failed there ("unhashable type")
        (lambda fm: deniro_rt.fill("a [MASK]", precision=["fp32"]), "precision must be a string, got list ['fp32']"),
    ],
)
def test_wrong_types_raise_type_error(fm, call, message):
    with pytest.raises(TypeError) as info:
        call(fm)
    assert isinstance(info.value, DeniroTypeError) and isinstance(info.value, ValueError)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda fm: fm.fill(["ok [MASK]", "   "]), "text 1 is empty; pass a sentence with [MASK] in it"),
        (
            lambda fm: fm.fill("a [mask] movie"),
            "text 0 has no [MASK]: 'a [mask] movie' (the mask token is case-sensitive: write [MASK])",
        ),
        (lambda fm: fm.fill("a [MASK]", top_k=0), "top_k must be a positive integer, got 0"),
        (lambda fm: fm.fill("a [MASK]", top_k=np.int64(-3)), "top_k must be a positive integer, got np.int64(-3)"),
        (lambda fm: fm.fill("a [MASK]", targets=[]), "targets must be a non-empty list of non-empty strings, got []"),
        (
            lambda fm: fm.fill("a [MASK]", targets=["movie", " "]),
            "targets must be a non-empty list of non-empty strings, got ['movie', ' ']",
        ),
        (lambda fm: deniro_rt.FillMask(device="tpu"), "device must be one of auto, cpu, cuda, got 'tpu'"),
        # one text takes the latency path, which skipped the check
        (lambda fm: fm.fill("a [MASK]", batch_size=0), "batch_size must be a whole number >= 1, got 0"),
        (lambda fm: fm.fill([], top_k=0), "top_k must be a positive integer, got 0"),  # as fill_arrays([])
        (
            lambda fm: fm.fill("a [MASK]", targets=["word " * 300]),  # widened past the model's positions
            "targets ['word word word word word word word word '] are over 256 word pieces; pass words, not passages",
        ),
        (
            lambda fm: fm.fill("the [MASK] was [MASK].", joint=True, targets=["good"]),  # targets were ignored
            "joint=True fills the masks with the model's own choices; targets cannot rank there",
        ),
        (
            lambda fm: deniro_rt.FillMask(""),  # loaded the shipped model
            "model is an empty path; pass an export folder, or none for the shipped model",
        ),
    ],
)
def test_bad_values_raise_value_error_not_type_error(fm, call, message):
    with pytest.raises(ValueError) as info:
        call(fm)
    assert isinstance(info.value, DeniroError) and not isinstance(info.value, TypeError)
    assert str(info.value) == message


def test_missing_artifact_is_a_value_error(tmp_path):
    with pytest.raises(ValueError) as info:
        deniro_rt.FillMask(tmp_path / "nowhere")
    assert isinstance(info.value, ArtifactError)


def test_text_errors_name_the_text_and_survive_pickling(fm):
    """A text's error is a TextError with its index (a CLI names the line; Ray hands it across processes)."""
    import pickle

    with pytest.raises(TextError) as info:
        fm.fill(["ok [MASK]", "caf\udce9 [MASK]"])  # a byte that was not UTF-8, kept as a surrogate by a reader
    assert str(info.value) == (
        "text 1 is not valid Unicode (character 3: '\\udce9', from bytes that are not UTF-8?); "
        "decode the input as UTF-8"
    )
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), str(copy), copy.index) == (TextError, str(info.value), 1)
    with pytest.raises(TextError) as info:
        fm.fill_arrays(["ok [MASK]", "x", "y [MASK]"])
    assert info.value.index == 1 and str(info.value).startswith("text 1 has no [MASK]")


def test_a_too_long_text_names_the_fix_in_each_surfaces_words(fm):
    """The runtime says truncation=True; the CLI and the batch job name --truncation, the server its JSON field."""
    import pickle

    with pytest.raises(TooLongError) as info:
        fm.fill(["ok [MASK]", "good " * 600 + "[MASK]"])
    problem = "text 1 is 603 tokens, more than the model's maximum of 512; shorten it, or pass "
    assert str(info.value) == problem + "truncation=True to keep a window around the masks"
    renamed = info.value.naming("--truncation")
    assert (type(renamed), str(renamed), renamed.index) == (
        TooLongError,
        problem + "--truncation to keep a window around the masks",
        1,
    )
    copy = pickle.loads(pickle.dumps(renamed))  # a Ray worker's error crosses processes
    assert (type(copy), str(copy), copy.index) == (TooLongError, str(renamed), 1)


def test_a_top_k_above_the_vocabulary_is_the_whole_vocabulary(fm):
    assert len(fm.fill_arrays([], top_k=2**63).token_ids) == 0  # was numpy's "Maximum allowed dimension exceeded"
    assert len(fm.fill("a [MASK] movie", top_k=10**9)) == fm.manifest.vocab_size


def test_a_malformed_manifest_is_an_artifact_error(tmp_path):
    import shutil

    from deniro_rt.models import DEFAULT_MODEL_DIR

    copy = tmp_path / "copy"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    for content, message in (
        (b"\xff\xfe{", "is not valid JSON ('utf-8' codec can't decode byte 0xff"),  # was a UnicodeDecodeError
        (b"[1, 2]", "holds a JSON list, not a manifest object; re-run the export"),  # was an AttributeError
    ):
        (copy / "deniro.json").write_bytes(content)
        with pytest.raises(ArtifactError, match=re.escape(message)):
            deniro_rt.FillMask(copy)
    with pytest.raises(ArtifactError, match=r"deniro\.json is a file, not a model folder \(pass an export folder"):
        deniro_rt.FillMask(copy / "deniro.json")


def test_any_sequence_of_strings_is_texts(fm):
    """The annotation says Sequence[str]: a NumPy array or a UserList of strings was refused."""
    from collections import UserList

    texts = ["a [MASK] movie", "the [MASK] end ."]
    want = fm.fill(texts, top_k=2)
    assert fm.fill(np.array(texts), top_k=2) == want and fm.fill(UserList(texts), top_k=2) == want
    assert fm.fill_arrays(np.array(texts), top_k=2).to_dicts() == want
