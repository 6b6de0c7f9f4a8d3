"""train.prune: the pruned folder is checked against the original model and tokenizer it came from."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from deniro_rt.errors import DeniroError
from train import prune

KEEP = 400  # of the tiny tokenizer's 600 pieces: prunes a third
COUNT_TEXTS = 300
SHIFT = 300  # the source vocabulary is rotated: specials at 300-304
SPECIALS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, imdb_texts):
    """The suite's 500 train reviews as a dataset folder (reading the full 25k-review train split per run
    would cost more than pruning the tiny model)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("imdb_small")
    pq.write_table(pa.table({"text": imdb_texts["train"]}), folder / "train.parquet")
    return folder


def _rotated(tokenizer, shift):
    """The same WordPiece tokenizer with every id moved by `shift` (mod size): the special tokens leave the
    front, so pruning pieces before them must move their ids (post-processor, added tokens, pad id)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    size = len(spec["model"]["vocab"])
    spec["model"]["vocab"] = {piece: (i + shift) % size for piece, i in spec["model"]["vocab"].items()}
    for token in spec["added_tokens"]:
        token["id"] = (token["id"] + shift) % size
    for special in spec["post_processor"]["special_tokens"].values():
        special["ids"] = [(i + shift) % size for i in special["ids"]]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        model_max_length=tokenizer.model_max_length,
        model_input_names=tokenizer.model_input_names,
        **tokenizer.special_tokens_map,
    )


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """tiny_model_dir's model with a random projector bias (its init is all zeros: a wrong bias row would not
    show) and its vocabulary rotated so that [PAD], [CLS], ... sit at ids 300-304."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    tokenizer = _rotated(tiny_tokenizer, SHIFT)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        bias = torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(1))  # [vocab]
        model.vocab_projector.bias.copy_(bias)
    folder = tmp_path_factory.mktemp("source")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, source_dir, small_dataset):
    out = tmp_path_factory.mktemp("pruned") / "model"
    assert (
        prune.run(
            [
                "--model",
                str(source_dir),
                "--dataset",
                str(small_dataset),
                "--output",
                str(out),
                "--keep",
                str(KEEP),
                "--count-texts",
                str(COUNT_TEXTS),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def pair(source_dir, pruned_dir):
    """(old tokenizer, new tokenizer, old model, new model, kept old ids ascending), all loaded from disk."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    old_tok, new_tok = AutoTokenizer.from_pretrained(source_dir), AutoTokenizer.from_pretrained(pruned_dir)
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    kept = np.array(sorted(old_vocab[piece] for piece in new_vocab))  # [keep] old ids, as the new ids order them
    assert [new_vocab[old_tok.convert_ids_to_tokens(int(i))] for i in kept] == list(range(len(kept)))
    models = [AutoModelForMaskedLM.from_pretrained(d).eval() for d in (source_dir, pruned_dir)]
    return old_tok, new_tok, models[0], models[1], kept


def _all_kept_sentences(old_tok, kept, texts, minimum=8):
    """IMDB sentences whose original pieces are all kept (so their tokenization must not change)."""
    sentences = [s.strip() for t in texts for s in re.split(r"[.!?]|<br />", t) if len(s.split()) >= 3]
    chosen = [s for s in sentences if np.isin(old_tok(s)["input_ids"], kept).all()][:16]
    assert len(chosen) >= minimum, "too few all-kept sentences for a meaningful comparison"
    return chosen


def test_logits_equal_the_original_at_the_kept_ids(pair, imdb_texts):
    old_tok, new_tok, old_model, new_model, kept = pair
    sentences = _all_kept_sentences(old_tok, kept, imdb_texts["test"])
    old_batch = old_tok(sentences, padding=True, return_tensors="pt")
    new_batch = new_tok(sentences, padding=True, return_tensors="pt")
    assert (old_batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        expected = old_model(**old_batch).logits[..., torch.from_numpy(kept)]  # [batch, seq, keep]
        got = new_model(**new_batch).logits  # [batch, seq, keep]
    assert got.shape[-1] == KEEP
    assert expected.abs().max() > 1.0  # not a degenerate comparison
    assert (got - expected).abs().max() < 1e-5


def test_tokenizer_ids_are_the_old_ids_mapped(pair, pruned_dir, imdb_texts):
    from tokenizers import Tokenizer

    old_tok, new_tok, _, new_model, kept = pair
    new_of_old = {int(old): new for new, old in enumerate(kept)}
    for sentence in _all_kept_sentences(old_tok, kept, imdb_texts["train"]):
        old_ids, new_ids = old_tok(sentence)["input_ids"], new_tok(sentence)["input_ids"]
        assert new_ids == [new_of_old[i] for i in old_ids]
        # the runtime reads tokenizer.json with `tokenizers` alone: it must agree
        assert Tokenizer.from_file(str(pruned_dir / "tokenizer.json")).encode(sentence).ids == new_ids
    for token in SPECIALS:
        assert new_tok.convert_tokens_to_ids(token) == new_of_old[old_tok.convert_tokens_to_ids(token)]
    assert old_tok.pad_token_id == SHIFT and new_tok.pad_token_id == new_of_old[SHIFT] < SHIFT  # moved
    assert new_tok.mask_token == "[MASK]"
    assert (new_model.config.vocab_size, len(new_tok)) == (KEEP, KEEP)
    assert new_model.config.pad_token_id == new_tok.pad_token_id
    assert new_model.vocab_projector.weight is new_model.distilbert.embeddings.word_embeddings.weight
    assert new_tok.model_max_length == old_tok.model_max_length


def test_a_pruned_whole_word_falls_back_to_kept_pieces(pair):
    old_tok, new_tok, *_, kept = pair
    pruned_words = [
        piece
        for piece, i in old_tok.get_vocab().items()
        if i not in set(kept.tolist()) and piece.isalpha() and len(piece) > 3
    ]
    assert pruned_words, "the tiny vocabulary lost no whole-word piece"
    word = pruned_words[0]
    assert old_tok.tokenize(word) == [word]  # one piece before pruning
    pieces = new_tok.tokenize(word)
    assert len(pieces) > 1 and "[UNK]" not in pieces
    assert "".join(p.removeprefix("##") for p in pieces) == word


def test_prune_json_records_config_and_stats(pruned_dir, source_dir):
    record = json.loads((pruned_dir / "prune.json").read_text())
    stats = record["stats"]
    assert record["config"]["keep"] == KEEP and record["config"]["count_texts"] == COUNT_TEXTS
    assert (stats["original_vocab_size"], stats["kept"], stats["forced_special"]) == (600, KEEP, 5)
    assert stats["forced_single_char"] > 20  # letters, digits, punctuation (x and ##x)
    assert 0.5 < stats["covered_fraction"] < 1.0  # something was pruned that the counted reviews use
    assert stats["tokens_per_review_ratio"] > 1.0  # pruned words come back as several pieces
    assert stats["unk_fraction_after"] <= stats["unk_fraction_before"] + 1e-4
    assert stats["source_model"] == str(source_dir.resolve())


@pytest.mark.parametrize(
    "keep, message",
    [
        (50, r"--keep 50 is smaller than the \d+ pieces that are always kept .*pass --keep \d+ or more"),
        (600, r"--keep 600 is not smaller than the vocabulary \(600 pieces\): nothing to prune; pass a smaller "
         r"--keep \(e.g. 400\)$"),
        (300, r"^--count-texts must be at least 1 \(the default counts 5000 reviews\), got 0$"),
    ],
)  # fmt: skip
def test_bad_keep_or_count_is_refused_and_writes_nothing(tiny_model_dir, small_dataset, tmp_path, keep, message):
    out = tmp_path / "out"
    count_texts = 0 if "count-texts" in message else COUNT_TEXTS
    config = prune.PruneConfig(
        model=str(tiny_model_dir), dataset=str(small_dataset), output=str(out), keep=keep, count_texts=count_texts
    )
    with pytest.raises(DeniroError, match=message):
        prune.main(config)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_refused_in_one_line(tiny_model_dir, small_dataset, tmp_path, capsys):
    from transformers import DistilBertConfig, DistilBertModel

    headless = tmp_path / "headless"
    DistilBertModel(DistilBertConfig(vocab_size=600, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        headless
    )
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    shutil.copy(small_dataset / "train.parquet", only_test / "test.parquet")  # a dataset without a train split
    cases = [
        (tmp_path / "nowhere", small_dataset, "no config.json"),
        (headless, small_dataset, "has no masked-LM head"),
        (tiny_model_dir, only_test, "has no train.parquet"),
    ]
    for model, dataset, message in cases:
        out = tmp_path / "out"
        assert prune.run(["--model", str(model), "--dataset", str(dataset), "--output", str(out), "--keep", "300"]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_a_damaged_model_folder_is_one_line(tiny_model_dir, small_dataset, tmp_path, capsys):
    """A config.json that is not JSON, or weights cut short, were transformers' or safetensors' traceback."""
    fix = "pass a DistilBertForMaskedLM save_pretrained folder (e.g. runs/minilm-gpu)"
    for damaged, name, cut, error in (
        ("bad_config", "config.json", 1, "OSError: It looks like the config file at '{}' is not a valid JSON file."),
        (
            "cut_weights",
            "model.safetensors",
            1000,
            "SafetensorError: Error while deserializing header: invalid header length",
        ),
    ):
        folder = tmp_path / damaged
        shutil.copytree(tiny_model_dir, folder)
        (folder / name).write_bytes((folder / name).read_bytes()[:cut])
        out = tmp_path / "out"
        assert prune.run(["--model", str(folder), "--dataset", str(small_dataset), "--output", str(out)]) == 2
        wanted = f"error: --model {folder}: could not load it ({error.format(folder / name)}); {fix}"
        assert capsys.readouterr().err.strip() == wanted
        assert not out.exists()


def test_a_failure_after_writing_leaves_no_output(tiny_model_dir, small_dataset, tmp_path, monkeypatch):
    def broken_check(*args, **kwargs):
        raise RuntimeError("simulated failure after the model was written")

    monkeypatch.setattr(prune, "check_logits", broken_check)
    config = prune.PruneConfig(
        model=str(tiny_model_dir),
        dataset=str(small_dataset),
        output=str(tmp_path / "out"),
        keep=KEEP,
        count_texts=COUNT_TEXTS,
    )
    with pytest.raises(RuntimeError, match="simulated"):
        prune.main(config)
    assert list(tmp_path.iterdir()) == []  # neither --output nor the staging folder


def test_ctrl_c_while_torch_imports_is_one_line(tiny_model_dir, small_dataset, tmp_path, ctrl_c_while_importing):
    """train.prune imported torch with the module (about 3 s), before run_main's try: Ctrl-C meanwhile was a
    KeyboardInterrupt traceback instead of run_main's line."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--dataset", str(small_dataset), "--output", str(out), "--keep", "300"]
    code, err = ctrl_c_while_importing("torch", "train.prune:run", argv)
    assert (code, err.strip().splitlines()[-1:]) == (130, [f"interrupted: nothing written to {out}"]), err[-3000:]
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["importing"]  # no stage left
