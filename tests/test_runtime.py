"""deniro_rt against transformers' FillMaskPipeline on the same tiny checkpoint, and its error handling."""

import copy
import gc
import itertools
import json
import pickle
import shutil
import subprocess
import sys
import threading
import warnings
import weakref

import numpy as np
import pytest

import deniro_rt
from deniro_rt import FillMask
from deniro_rt.__main__ import run as cli
from deniro_rt.artifact import load_manifest
from deniro_rt.data import chunk_texts, premask
from deniro_rt.errors import ArtifactError, DeniroError, DeniroTypeError, TextError
from deniro_rt.openvino import bf16_by_default

TEXTS = [
    "this movie is [MASK] .",
    "the acting was [MASK] and the story was good , i would watch it again .",
    "[MASK] !",
    "i have seen this film twice and the ending still makes me [MASK] every time .",
]


@pytest.fixture(scope="module")
def fm(tiny_artifact):
    return FillMask(tiny_artifact, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    return pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), device="cpu")


def assert_same_predictions(ours, theirs):
    assert [p["token"] for p in ours] == [p["token"] for p in theirs]
    assert [p["token_str"] for p in ours] == [p["token_str"] for p in theirs]
    np.testing.assert_allclose([p["score"] for p in ours], [p["score"] for p in theirs], atol=1e-4, rtol=0)


@pytest.mark.parametrize("top_k", [1, 5, 12])
def test_single_mask_parity(fm, pipe, top_k):
    ours = fm.fill(TEXTS, top_k=top_k)
    theirs = pipe(TEXTS, top_k=top_k)
    assert len(ours) == len(TEXTS)  # aligned with the input order despite length bucketing
    for o, t in zip(ours, theirs):
        assert len(o) == top_k
        assert_same_predictions(o, t)
        assert [p["sequence"] for p in o] == [p["sequence"] for p in t]


def test_single_string_gives_its_list_directly(fm, pipe):
    assert_same_predictions(fm.fill(TEXTS[0]), pipe(TEXTS[0]))


def test_several_masks_parity(fm, pipe):
    text = "the [MASK] was great but the [MASK] was too long ."
    ours, theirs = fm.fill(text, top_k=4), pipe(text, top_k=4)
    assert len(ours) == 2
    for o, t in zip(ours, theirs):
        assert_same_predictions(o, t)
    # the sequence is decoded cleanly: no [CLS]/[SEP], the other mask left visible
    seq = ours[0][0]["sequence"]
    assert "[CLS]" not in seq and "[SEP]" not in seq and seq.count("[MASK]") == 1


def test_single_piece_targets_parity(fm, pipe, tiny_tokenizer):
    words = [w for w in ["the", "and", "movie", "film", "good", "bad", "it"] if len(tiny_tokenizer.tokenize(w)) == 1]
    assert len(words) >= 4
    for text in TEXTS[:2]:
        assert_same_predictions(fm.fill(text, targets=words, top_k=3), pipe(text, targets=words, top_k=3))


def test_multi_piece_target_is_scored_as_a_whole_word(fm, tiny_model_dir, tiny_tokenizer):
    import torch
    from transformers import AutoModelForMaskedLM

    word = next(
        w
        for w in ["masterpiece", "unwatchable", "cinematography", "disappointing"]
        if len(tiny_tokenizer.tokenize(w)) >= 2
    )
    pieces = tiny_tokenizer.convert_tokens_to_ids(tiny_tokenizer.tokenize(word))
    [result] = fm.fill("this movie is a [MASK] .", targets=[word])
    widened = "this movie is a " + " ".join(["[MASK]"] * len(pieces)) + " ."
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    batch = tiny_tokenizer(widened, return_tensors="pt")
    with torch.no_grad():
        logp = model(**batch).logits[0].log_softmax(-1)  # [seq, vocab]
    positions = (batch["input_ids"][0] == tiny_tokenizer.mask_token_id).nonzero().ravel()
    expected = float(sum(logp[p, t] for p, t in zip(positions, pieces)).exp())
    assert result["token"] == tuple(pieces) and result["token_str"] == word
    assert result["score"] == pytest.approx(expected, rel=1e-4)
    assert result["sequence"] == f"this movie is a {word}."


def whole_word_reference(model, tokenizer, text: str, words: list[str]) -> list[list[tuple[tuple, float]]]:
    """Per mask of `text`, per word: (piece ids, product of the pieces' probabilities with that mask widened
    to one mask per piece, the other masks left in), best first: what fill(targets=...) documents."""
    import torch

    per_mask = []
    for m in range(text.count("[MASK]")):
        scored = []
        for word in dict.fromkeys(words):
            pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
            parts = text.split("[MASK]")
            widened = "[MASK]".join(parts[: m + 1]) + " ".join(["[MASK]"] * len(pieces)) + "[MASK]".join(parts[m + 1 :])
            batch = tokenizer(widened, return_tensors="pt")
            with torch.no_grad():
                logp = model(**batch).logits[0].double().log_softmax(-1)  # [seq, vocab]
            positions = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().ravel()[m : m + len(pieces)]
            scored.append((tuple(pieces), float(sum(logp[p, t] for p, t in zip(positions, pieces)).exp())))
        per_mask.append(sorted(scored, key=lambda c: -c[1]))
    return per_mask


def test_one_and_multi_piece_targets_together(fm, tiny_model_dir, tiny_tokenizer):
    """Words of 1, 2 and more pieces in one call (this raised a ValueError in np.concatenate), several
    masks, several texts, duplicate words: each equals the widened-mask product computed in PyTorch."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    words = ["movie", "film", "xyzzyq", "masterpiece", "film", "unwatchable", "it"]
    lengths = {len(tiny_tokenizer.tokenize(w)) for w in words}
    assert 1 in lengths and len(lengths) >= 3  # one-piece and several multi-piece widths together
    texts = ["this is a great [MASK] !", "the [MASK] was great but the [MASK] was too long .", TEXTS[1]]
    results = fm.fill(texts, targets=words, top_k=10)
    for text, result in zip(texts, results):
        per_mask = result if isinstance(result[0], list) else [result]
        reference = whole_word_reference(model, tiny_tokenizer, text, words)
        assert len(per_mask) == len(reference) == text.count("[MASK]")
        for ours, theirs in zip(per_mask, reference):
            assert len(ours) == 6  # the duplicate "film" is ranked once
            tokens = [p["token"] if isinstance(p["token"], tuple) else (p["token"],) for p in ours]
            assert tokens == [t for t, _ in theirs]
            np.testing.assert_allclose([p["score"] for p in ours], [s for _, s in theirs], rtol=1e-4, atol=1e-12)
    assert fm.fill(texts[0], targets=words, top_k=2) == results[0][:2]  # alone == in a batch


def test_targets_spelled_alike_are_one_candidate_and_long_texts_leave_room_for_their_pieces(fm, tiny_tokenizer):
    spelled_alike = fm.fill("this is a great [MASK] !", targets=["Film", "film", "movie"], top_k=10)
    assert sorted(p["token_str"] for p in spelled_alike) == ["film", "movie"]  # "film" was there twice
    word, most = "unwatchable", fm.manifest.max_positions
    width = len(tiny_tokenizer.tokenize(word))
    assert width > 1 and len(tiny_tokenizer.tokenize("good")) == 1
    fits = "good " * (most - 3) + "[MASK]"  # exactly the model's maximum with [CLS] and [SEP]...
    with pytest.raises(TextError) as info:  # ...but not once the mask is widened to the word's pieces
        fm.fill(fits, targets=[word, "movie"])  # was an engine error from deep inside ONNX Runtime
    assert str(info.value) == (
        f"text 0 is {most} tokens, more than the model's maximum of {most} less the {width - 1} extra pieces of "
        "the longest target; shorten it, or pass truncation=True to keep a window around the masks"
    )
    window = "good " * (most - width - 2) + "[MASK]"  # what truncation keeps: the widened text just fits
    assert fm.fill(fits, targets=[word, "movie"], truncation=True) == fm.fill(window, targets=[word, "movie"])


def test_joint_fill(fm):
    single = fm.fill("this movie is [MASK] .", joint=True)
    assert single["tokens"] == [fm.fill("this movie is [MASK] .", top_k=1)[0]["token"]]
    text = "the [MASK] was great but the [MASK] was too long ."
    joint = fm.fill(text, joint=True)
    independent = fm.fill(text, top_k=1)
    first = int(np.argmax([m[0]["score"] for m in independent]))  # the most confident mask goes first
    assert joint["tokens"][first] == independent[first][0]["token"]
    assert "[MASK]" not in joint["sequence"] and len(joint["tokens"]) == 2 and 0 < joint["score"] <= 1


def test_perplexity_matches_pytorch(fm, tiny_model_dir, tiny_tokenizer, imdb_texts):
    import torch
    from transformers import AutoModelForMaskedLM

    chunks = chunk_texts(tiny_tokenizer.backend_tokenizer, imdb_texts["test"][:20], 64)
    masked = premask(chunks, seed=5, mask_token_id=tiny_tokenizer.mask_token_id, vocab_size=len(tiny_tokenizer))
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(masked.input_ids)).logits
        labels = torch.from_numpy(masked.labels)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), labels.flatten(), reduction="sum")
    expected = float(torch.exp(nll / (labels != -100).sum()))
    result = fm.perplexity(masked)
    assert result["tokens"] == int((masked.labels != -100).sum())
    assert result["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert deniro_rt.perplexity(masked, model=fm.manifest.folder, device="cpu", precision="fp32")[
        "perplexity"
    ] == pytest.approx(result["perplexity"])


def test_threads_share_one_session(fm):
    texts = TEXTS * 8
    serial = fm.fill(texts, top_k=3, batch_size=5)
    results = [None] * 4

    def work(i):
        results[i] = fm.fill(texts, top_k=3, batch_size=3 + i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert [[p["token"] for p in o] for o in r] == [[p["token"] for p in o] for o in serial]


def test_a_dropped_fillmask_is_freed_at_once(tiny_artifact):
    """No reference cycle through FillMask: a service that reloads its model frees the old session when it drops it,
    not at the next full garbage collection (8 reloads of the shipped model had reached 700 MB before)."""
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    fm.fill(TEXTS, top_k=3), fm.fill(TEXTS[0], targets=["film", "good"]), fm.fill_arrays(TEXTS).to_dicts()
    dropped = weakref.ref(fm)
    gc.disable()
    try:
        del fm
        assert dropped() is None
    finally:
        gc.enable()


def test_pickling_into_another_process_is_refused_with_the_fix(fm):
    """A process pool pickles its tasks and results: a FillMask (fm.fill as the task) or a Predictions
    (a worker's result) failed deep in onnxruntime ("cannot pickle ... InferenceSession"); copy.copy still works."""
    for value in (fm, fm.fill, fm.fill_arrays(TEXTS)):
        with pytest.raises(DeniroTypeError, match=r"cannot be pickled .* build one FillMask per process .* to_dicts"):
            pickle.dumps(value)
    assert copy.copy(fm).fill(TEXTS, top_k=3) == fm.fill(TEXTS, top_k=3)


FIRST_RUNS_AT_ONCE = """
import sys, threading
import numpy as np
from deniro_rt.openvino import OpenVinoGraph
graph = OpenVinoGraph(sys.argv[1], "f32")
feed = {"input_ids": np.array([[2, 4, 3]]), "attention_mask": np.ones((1, 3), np.int64), "mask_index": np.array([1]),
        "target_ids": np.zeros((1, 1), np.int64), "top_k": np.array([1])}
sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
barrier = threading.Barrier(12)
dtype = graph.compiled.inputs[0].get_element_type()  # run's first step: its input's NumPy dtype (the racy table)
threads = [threading.Thread(target=lambda: (barrier.wait(), dtype.to_dtype(), graph.run(feed))) for _ in range(12)]
[t.start() for t in threads]
[t.join() for t in threads]
print("ok")
"""


def test_the_first_openvino_runs_of_several_threads_do_not_deadlock(fm):
    """A process's first OpenVINO infers, from 12 threads at once, hung 3 to 7 of 10 processes before OpenVinoGraph
    built pyopenvino's dtype table on load (deniro_rt.openvino.warm_dtypes); run's first step, that table's lookup,
    from 12 threads at once hung 7 of 8. Five processes, each must finish."""
    graph = str(fm.manifest.folder / fm.graph_file)
    for _ in range(5):  # one after another: side by side on few cores they raced less
        try:
            run = subprocess.run([sys.executable, "-c", FIRST_RUNS_AT_ONCE, graph], capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("12 threads' first OpenVINO runs deadlocked the process")
        assert run.stdout == b"ok\n", run.stderr.decode()


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "texts, message",
    [
        (["a fine [MASK] .", "no mask here"], "text 1 has no [MASK]: 'no mask here'; put [MASK]"),
        (["this is [mask] ."], "text 0 has no [MASK]: 'this is [mask] .' (the mask token is case-sensitive"),
        ([""], "text 0 is empty"),
        (["ok [MASK]", "   "], "text 1 is empty"),
        (None, "texts is None"),
        (["ok [MASK]", 3], "text 1 is int, expected a string"),
        (42, "texts must be a string or a list of strings, got int"),
    ],
)
def test_bad_texts(fm, texts, message):
    with pytest.raises(DeniroError) as info:
        fm.fill(texts)
    assert message in str(info.value)


def test_empty_list_returns_empty_list(fm):
    assert fm.fill([]) == []


def test_bad_top_k(fm):
    with pytest.raises(DeniroError, match="top_k must be a positive integer, got 0"):
        fm.fill("a [MASK]", top_k=0)


def test_too_long_text_and_truncation_window(fm):
    filler = "the movie was long and slow . " * 40  # > 128 tokens (the tiny model's maximum)
    text = filler + "the ending was [MASK] ." + " and then it was over ." * 10
    with pytest.raises(DeniroError, match=r"text 0 is \d+ tokens, more than the model's maximum of 128"):
        fm.fill(text)
    kept = fm.fill(text, truncation=True, top_k=3)  # the window's answers: tests/test_reference.py
    assert len(kept) == 3 and all(0 < p["score"] <= 1 for p in kept)
    far = "[MASK] was the first word . " + filler + "the ending was [MASK] ."
    with pytest.warns(UserWarning) as caught:
        result = fm.fill(far, truncation=True, top_k=2)
    assert [str(w.message) for w in caught] == [
        "masks of 1 text lie outside the 128-token window kept by truncation (0-based: text 0 masks [1]); their "
        "predictions are empty lists"
    ]
    assert len(result[0]) == 2 and result[1] == []  # the window keeps the first mask and its context


def test_a_truncation_window_keeps_every_mask_whenever_they_fit():
    """Masks up to budget - 1 tokens apart fit one window of `budget` tokens: none is cut. The centred window
    started one token early when an even budget met an odd span, so masks exactly budget - 1 apart lost the last
    one (with a warning that it lay outside). Masks further apart keep the first, with left context."""
    from deniro_rt.runtime import Window

    def fit(window: Window, first: int, span: int) -> tuple[np.ndarray, list[int]]:
        inner = np.full(40 + span, 7)  # [CLS] + 40 + span tokens + [SEP]: always over the window
        inner[[first, first + span]] = 4
        return window.fit(np.concatenate([[2], inner, [3]]), 0)

    for budget, first in itertools.product((17, 18), (0, 5, 20)):
        window = Window(max_len=budget + 2, mask_id=4, truncation=True)
        for span in range(budget):
            kept, lost = fit(window, first, span)
            assert lost == [] and len(kept) == budget + 2, (budget, span, first)
            assert (kept == 4).sum() == (1 if span == 0 else 2), (budget, span, first)
        for span in (budget, budget + 1):  # too far apart: the first mask, an eighth of the window before it
            kept, lost = fit(window, first, span)  # (the call that fits them warns: warn_cut_masks)
            assert lost == [1] and np.flatnonzero(kept == 4).tolist() == [1 + min(first, budget // 8)]


def test_masks_one_window_apart_are_both_answered(fm):
    """The tiny model's window is 126 tokens: two masks 125 tokens apart (the second cut before) give the answers
    of the text cut by hand to exactly that window."""
    between = "good " * 124  # one token each
    window = "[MASK] " + between + "[MASK]"
    assert len(fm.tokenizer.encode(window).ids) == fm.manifest.max_positions  # fits as it is
    text = "good " * 30 + window + " good" * 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mask lies outside
        assert fm.fill(text, truncation=True, top_k=3) == fm.fill(window, top_k=3)


def test_thousand_masks(fm):
    text = " ".join(["[MASK]"] * 1000)
    with pytest.raises(DeniroError, match="text 0 is 1002 tokens"):
        fm.fill(text)
    with pytest.warns(UserWarning, match="lie outside"):
        result = fm.fill(text, truncation=True, top_k=1)
    assert len(result) == 1000 and sum(1 for r in result if r) == 126


def test_control_characters_and_emoji(fm, pipe):
    text = "what a \x07 great [MASK] \U0001f600 \u200b !"
    assert_same_predictions(fm.fill(text), pipe(text))


# ---------------------------------------------------------------------- providers and artifacts
def test_cuda_without_the_gpu_build(tiny_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DeniroError) as info:
        FillMask(tiny_artifact, device="cuda")
    message = str(info.value)
    assert "CUDAExecutionProvider" in message and "CPUExecutionProvider" in message
    assert 'pip install "deniro[gpu]"' in message


def test_precision_choice(tiny_artifact):
    # The CPU default: bf16 where the artifact's bf16 record passed and the CPU is the kind it was measured on
    # (tests/test_openvino.py), else fp32; int8 is opt-in (issue 11)
    bf16 = bf16_by_default() and load_manifest(tiny_artifact).passed("bf16")
    assert FillMask(tiny_artifact, device="cpu").precision == ("bf16" if bf16 else "fp32")
    assert FillMask(tiny_artifact, device="cpu", precision="int8").precision == "int8"
    with pytest.raises(DeniroError, match="precision fp16 does not run on CPUExecutionProvider"):
        FillMask(tiny_artifact, device="cpu", precision="fp16")
    with pytest.raises(DeniroError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        FillMask(tiny_artifact, device="tpu")


def test_corrupted_and_missing_artifacts(tiny_artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    graph = broken / "fast.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="fast.onnx is corrupted or was replaced"):
        FillMask(broken, device="cpu", precision="fp32")
    with pytest.raises(ArtifactError, match="model folder not found"):
        FillMask(tmp_path / "nowhere")
    manifest = json.loads((broken / "deniro.json").read_text())
    manifest["format_version"] = 99
    (broken / "deniro.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99"):
        FillMask(broken)


# ---------------------------------------------------------------------- CLI and packaging
def test_cli_json_and_stdin(tiny_artifact, capsys, monkeypatch):
    assert (
        cli(
            [
                "this movie is [MASK] .",
                "--model",
                str(tiny_artifact),
                "--json",
                "--top-k",
                "2",
                "--precision",
                "fp32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == "this movie is [MASK] ." and len(row["result"]) == 2
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("a [MASK] day\n\nthe [MASK] end\n"))
    assert cli(["--model", str(tiny_artifact), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "a [MASK] day" in out and "the [MASK] end" in out
    assert cli(["no mask", "--model", str(tiny_artifact)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: text 0 has no [MASK]: 'no mask'; put [MASK] where a word should be predicted"
    )


def test_import_pulls_in_neither_torch_nor_transformers():
    code = (
        "import sys, deniro_rt, deniro_rt.runtime, deniro_rt.data, deniro_rt.__main__; "
        "bad = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threads_first_module_level_calls_share_one_session(tiny_artifact):
    """deniro_rt.fill from several threads at once, on a model not loaded yet: one session is built, not one each."""
    deniro_rt._cached_runtime.cache_clear()
    texts, answers = ["the film was [MASK] ."], []
    start = threading.Barrier(6)

    def call() -> None:
        start.wait()
        answers.append(deniro_rt.fill(texts, model=tiny_artifact, device="cpu", precision="fp32"))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert deniro_rt._cached_runtime.cache_info().misses == 1 and len(answers) == 6
    assert all(answer == answers[0] for answer in answers)
