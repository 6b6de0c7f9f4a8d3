"""Shared fixtures: the repo's IMDB sample and tiny models built from it.

Every test reads tests/data/imdb-sample (500 train + 500 test reviews, every 50th of the full splits), whether
or not ../shared sits beside the clone: a bare clone and a developer machine run the same suite on the same
texts. No fixture falls back to a hub id.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMDB_DIR = REPO / "tests" / "data" / "imdb-sample"  # made by tests/data/make_sample.py
SLOW_IMPORT = REPO / "tests" / "helpers" / "slow_import.py"


def pytest_report_header(config) -> str:
    return f"deniro IMDB data: {SAMPLE_IMDB_DIR} (repo sample, 500 reviews per split)"


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    return SAMPLE_IMDB_DIR


@pytest.fixture(scope="session")
def imdb_texts(imdb_dir) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    return {
        split: pq.read_table(imdb_dir / f"{split}.parquet", columns=["text"]).column("text").to_pylist()
        for split in ("train", "test")
    }  # 500 reviews each, both labels


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
    config = DistilBertConfig(
        vocab_size=len(tiny_tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=128,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
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
    return main(
        ExportConfig(
            onnx=True,
            model=str(tiny_model_dir),
            output=str(folder),
            precision=("fp32", "int8"),
            full_graph=True,
            validate=True,
            dataset=str(imdb_dir),
        )
    )


@pytest.fixture
def ctrl_c_while_importing(tmp_path):
    """A function running a CLI (ENTRY as "module:function", given argv) whose import of `module` waits, as a
    slow one of torch would, and pressing Ctrl-C during it: (exit code, stderr)."""

    def interrupt(module: str, entry: str, argv: list[str]) -> tuple[int, str]:
        ready = tmp_path / "importing"
        command = [sys.executable, str(SLOW_IMPORT), str(ready), module, entry, *argv]
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()  # not left sleeping after the test
            raise
        assert ready.exists(), f"{module} was not imported:\n{err[-3000:]}"
        return proc.returncode, err

    return interrupt
