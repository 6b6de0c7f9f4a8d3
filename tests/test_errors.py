"""deniro's errors are the conventional Python types: bad values are ValueError, wrong types TypeError."""

from __future__ import annotations

import numpy as np
import pytest

import deniro_rt
from deniro_rt import ArtifactError, DeniroError, DeniroTypeError


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
