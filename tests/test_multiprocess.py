"""Multi-process data-parallel training on CPU: two processes (torchrun, gloo) share every global batch.

`accelerate launch --multi_gpu --num_processes 2 -m train` and `torchrun --nproc_per_node 2 -m train`
start the same processes; torchrun is used here because it needs no accelerate config file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRACED = REPO / "tests" / "helpers" / "traced_train.py"
STEPS = 20
PER_PROCESS_BATCH = 4
PPL_TOLERANCE = 0.03  # masks and dropout differ between the runs (they derive from the rank)


def train_args(imdb_dir, tiny_model_dir, out: Path, batch_size: int) -> list[str]:
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
        "--batch-size",
        str(batch_size),
        "--max-steps",
        str(STEPS),
        "--save-every",
        "10",
    ]


def launch(prefix: list[str], trace: Path, args: list[str]) -> None:
    done = subprocess.run(
        [*prefix, str(TRACED), str(trace), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def rows_per_step(path: Path) -> list[set[tuple[int, ...]]]:
    return [{tuple(row) for row in json.loads(line)} for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, imdb_dir, tiny_model_dir):
    """The same global batch of 8: two processes x 4, and one process x 8."""
    base = tmp_path_factory.mktemp("multiprocess")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launch(torchrun, base / "trace2", train_args(imdb_dir, tiny_model_dir, base / "two", PER_PROCESS_BATCH))
    launch([sys.executable], base / "trace1", train_args(imdb_dir, tiny_model_dir, base / "one", 2 * PER_PROCESS_BATCH))
    return base


def test_each_process_sees_half_of_every_global_batch(runs):
    rank0, rank1 = rows_per_step(runs / "trace2" / "rank0.jsonl"), rows_per_step(runs / "trace2" / "rank1.jsonl")
    single = rows_per_step(runs / "trace1" / "rank0.jsonl")
    assert len(rank0) == len(rank1) == len(single) == STEPS
    for step, (a, b, whole) in enumerate(zip(rank0, rank1, single)):
        assert len(a) == len(b) == PER_PROCESS_BATCH, step
        assert a.isdisjoint(b), f"step {step}: both processes trained on the same chunk"
        assert a | b == whole, f"step {step}: the two halves are not the one-process global batch"


def test_two_process_checkpoint_loads_and_matches_one_process_perplexity(runs):
    from transformers import AutoModelForMaskedLM

    two = json.loads((runs / "two" / "metrics.json").read_text())["epochs"]
    one = json.loads((runs / "one" / "metrics.json").read_text())["epochs"]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, STEPS]  # same steps per epoch
    assert two[0]["perplexity"] == pytest.approx(
        one[0]["perplexity"], rel=1e-5
    )  # same eval set and init; fp32 sums split over 2 ranks
    assert two[-1]["perplexity"] < 0.9 * two[0]["perplexity"]  # it learned
    assert two[-1]["perplexity"] == pytest.approx(one[-1]["perplexity"], rel=PPL_TOLERANCE)
    assert (runs / "two" / "checkpoints" / f"step_{STEPS:08d}").is_dir()
    model = AutoModelForMaskedLM.from_pretrained(runs / "two")
    assert model.config.vocab_size == model.get_input_embeddings().num_embeddings
