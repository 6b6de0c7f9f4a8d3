"""Shared fixtures: the real IMDB parquet (../shared when present, else the repo's sample) and tiny
models built from it.

DENIRO_TEST_DATA=sample forces the sample (what a fresh clone without ../shared sees; CI runs both).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FULL_IMDB_DIR = REPO.parent / "shared" / "data" / "imdb"
SAMPLE_IMDB_DIR = REPO / "tests" / "data" / "imdb-sample"  # made by tests/data/make_sample.py
FULL_STRIDE = 50  # the sample holds every 50th train/test review: the same 500 texts either way


@dataclass(frozen=True)
class ImdbSource:
    folder: Path
    stride: int  # every `stride`-th review of train/test gives the suite's 500 texts
    label: str


def imdb_source() -> ImdbSource:
    forced = os.environ.get("DENIRO_TEST_DATA", "")
    if forced not in ("", "sample", "full"):
        raise pytest.UsageError(f"DENIRO_TEST_DATA must be 'sample' or 'full', got {forced!r}")
    full_present = (FULL_IMDB_DIR / "train.parquet").is_file()
    if forced == "full" and not full_present:
        raise pytest.UsageError(f"DENIRO_TEST_DATA=full but {FULL_IMDB_DIR} has no train.parquet")
    if full_present and forced != "sample":
        return ImdbSource(FULL_IMDB_DIR, FULL_STRIDE, "full copy")
    return ImdbSource(SAMPLE_IMDB_DIR, 1, "repo sample, 500 reviews per split")


def pytest_report_header(config) -> str:
    source = imdb_source()
    return f"deniro IMDB data: {source.folder} ({source.label})"


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    return imdb_source().folder


@pytest.fixture(scope="session")
def imdb_texts(imdb_dir) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    stride = imdb_source().stride
    return {split: pq.read_table(imdb_dir / f"{split}.parquet", columns=["text"]).column("text")
            .to_pylist()[::stride] for split in ("train", "test")}  # 500 reviews each, both labels


@pytest.fixture(scope="session")
def tiny_tokenizer(imdb_texts):
    from train.tokenizer import train_wordpiece

    return train_wordpiece(imdb_texts["train"], vocab_size=600, model_max_length=128)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random-init 2-layer DistilBERT MLM with its own WordPiece vocabulary, save_pretrained."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tiny_tokenizer), dim=32, n_layers=2, n_heads=2,
                              hidden_dim=64, max_position_embeddings=128,
                              pad_token_id=tiny_tokenizer.pad_token_id)
    model = DistilBertForMaskedLM(config).eval()
    with torch.no_grad():  # sharpen the random head so top-k orders are well separated
        model.vocab_projector.weight.mul_(8.0)
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_model_dir, imdb_dir) -> Path:
    """`tiny_model_dir` exported (fast fp32 + int8 graphs and the full graph), validated on IMDB."""
    from export.config import ExportConfig
    from export.pipeline import main

    folder = tmp_path_factory.mktemp("tiny_artifact")
    return main(ExportConfig(onnx=True, model=str(tiny_model_dir), output=str(folder), precision=("fp32", "int8"),
                             full_graph=True, validate=True, dataset=str(imdb_dir)))
