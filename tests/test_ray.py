"""Ray (extra deniro[ray]): Ray Data map_batches, the batch command (with and without Ray) and the Ray
Serve deployment over HTTP on 127.0.0.1, all compared with deniro_rt.fill on IMDB test sentences.

One local Ray (2 CPUs, no dashboard) for the whole module. Answers are compared exactly, in fp32
(Ray Data and Serve batch the texts differently from one fill call; fp32 is batch-invariant).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import deniro_rt
from deniro_rt.batch import main as batch_main
from deniro_rt.batch.ray import FillMaskBatch, FillSpec, fill_dataset
from deniro_rt.providers import usable_cores

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "deniro[ray]"')
pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install "deniro[ray]"')
serve = pytest.importorskip("ray.serve", reason='Ray Serve is not installed: pip install "deniro[ray]"')
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PRECISION = "fp32"


@pytest.fixture(scope="module")
def local_ray():
    """ray.init sets environment variables (RAY_AUTH_MODE, PYTHONBREAKPOINT, ...) and a SIGTERM handler
    in this process: put them back afterwards, so later tests and their subprocesses do not see Ray."""
    environ, sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    serve.shutdown()
    ray.shutdown()
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture(scope="module")
def sentences(imdb_texts) -> list[str]:
    """36 IMDB test sentences, one word of each masked (seeded)."""
    rng = np.random.default_rng(0)
    out = []
    for review in imdb_texts["test"]:
        picked = [s for s in deniro_rt.data.review_sentences(review) if 5 <= len(s.split()) <= 40][:1]
        masked = [deniro_rt.data.mask_one_word(s, rng) for s in picked]
        out += [m[0] for m in masked if m is not None]
        if len(out) == 36:
            return out
    return out


def as_json(result):
    """fill's result as it comes back from JSON (tuples become lists)."""
    return json.loads(json.dumps(result))


def expected(texts, **kwargs):
    return as_json(deniro_rt.fill(texts, precision=PRECISION, **kwargs))


def per_text(results) -> list[list[list[dict]]]:
    """fill's results with one-mask texts wrapped: per text, per mask, the dicts."""
    return [r if r and isinstance(r[0], list) else [r] for r in results]


def as_fill(columns: dict) -> list:
    """The batch output's list columns turned back into fill's dicts (sequences column needed)."""
    rows = zip(columns["token_ids"], columns["token_strs"], columns["scores"], columns["sequences"])
    return [
        [[{"score": s, "token": t, "token_str": w, "sequence": q} for t, w, s, q in zip(*m)] for m in zip(*row)]
        for row in rows
    ]


@pytest.fixture(scope="module")
def serve_port() -> int:
    """One port for the module: Serve's HTTP proxy keeps the options of its first start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- the map_batches callable
def test_fill_mask_batch_adds_list_columns_for_arrow_numpy_and_pandas_batches(sentences):
    import pandas as pd

    worker = FillMaskBatch(precision=PRECISION, threads=1, top_k=3, column="review", sequences=True)
    ids = np.arange(len(sentences))
    texts = [s.replace(" a ", " [MASK] ", 1) if i % 4 == 0 else s for i, s in enumerate(sentences)]  # 2 masks
    table = worker(pa.table({"review": texts, "id": ids}))
    out = worker({"review": np.array(texts, dtype=object), "id": ids})
    frame = worker(pd.DataFrame({"review": texts, "id": ids}))
    reference = per_text(expected(texts, top_k=3))
    assert table.column_names == [
        "review",
        "id",
        "top1",
        "top1_score",
        "mask_positions",
        "token_ids",
        "token_strs",
        "scores",
        "sequences",
    ]
    assert str(table.schema.field("token_ids").type) == "list<item: list<item: int64>>"
    assert as_fill(table.to_pydict()) == reference
    assert table.column("top1").to_pylist() == [r[0][0]["token_str"] for r in reference]
    assert table.column("top1_score").to_pylist() == [r[0][0]["score"] for r in reference]
    assert out.equals(table)  # Arrow out whatever came in: real list columns
    assert frame.column_names == table.column_names and frame.drop(["review"]).equals(table.drop(["review"]))
    assert "sequences" not in FillMaskBatch(precision=PRECISION, threads=1)(pa.table({"text": texts[:2]})).column_names


def test_the_documented_map_batches_call_writes_list_columns(local_ray, sentences, tmp_path):
    """docs/serving.md's map_batches call (Ray's default batch_format, numpy) wrote the nested columns as
    pickled Python objects (Ray's fallback for ragged numpy arrays), unreadable as lists without Ray."""
    import deniro_rt.batch.ray

    ray = local_ray
    ds = ray.data.from_arrow(pa.table({"text": sentences[:8], "id": list(range(8))}))
    out = ds.map_batches(deniro_rt.batch.ray.FillMaskBatch, fn_constructor_kwargs={"column": "text", "threads": 1},
        batch_size=256, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)  # fmt: skip
    out.write_parquet(str(tmp_path / "filled"))
    schema = pq.read_schema(next((tmp_path / "filled").glob("*.parquet")))
    assert schema.field("mask_positions").type == pa.list_(pa.field("element", pa.int64()))  # Ray's list naming
    assert schema.field("token_ids").type.value_type.value_type == pa.int64()
    assert schema.field("token_strs").type.value_type.value_type == pa.string()
    worker = FillMaskBatch(threads=1)
    with pytest.raises(deniro_rt.DeniroError, match="text 1 is NoneType, expected a string with"):
        worker({"text": np.array(["a [MASK] day", None], dtype=object)})  # a null was the text "None"


def test_ray_data_map_batches_equals_fill(local_ray, sentences):
    local_ray.data.DataContext.get_current().execution_options.preserve_order = True
    table = pa.table({"text": sentences, "id": list(range(len(sentences)))})
    blocks = [table.slice(i, 8) for i in range(0, table.num_rows, 8)]  # 5 blocks for 2 actors
    dataset = fill_dataset(
        local_ray.data.from_arrow(blocks), FillSpec(precision=PRECISION, sequences=True), concurrency=2, batch_size=8
    )
    rows = pa.concat_tables(dataset.iter_batches(batch_format="pyarrow", batch_size=None))
    assert rows.column("id").to_pylist() == list(range(len(sentences)))
    assert as_fill(rows.to_pydict()) == per_text(expected(sentences))


def test_replica_threads_follow_the_cpus_ray_assigned(local_ray):
    from deniro_rt.serve.ray import RayServeConfig, replica_threads

    @local_ray.remote(num_cpus=1)
    def threads_inside(config):
        return replica_threads(config)

    assert RayServeConfig(num_cpus=2).replica_threads() == 2
    assert local_ray.get(threads_inside.remote(RayServeConfig(num_cpus=2))) == 1  # what Ray gave wins


# ---------------------------------------------------------------------- python -m deniro_rt batch
@pytest.fixture
def corpus(tmp_path, sentences):
    path = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"id": list(range(len(sentences))), "review": sentences}), path)
    return path


@pytest.mark.parametrize(
    "extra", [[], ["--ray", "--concurrency", "2", "--batch-size", "8"]], ids=["in-process", "ray-data"]
)
def test_batch_command_writes_parquet_equal_to_fill(local_ray, corpus, sentences, tmp_path, extra, monkeypatch):
    """With --ray, windows of one 16-row shard (RAY_WINDOW_ROWS, window_rows): each its own Ray dataset, in order."""
    windows = []  # the rows of each list of blocks handed to Ray
    from_arrow = ray.data.from_arrow
    monkeypatch.setattr(
        ray.data, "from_arrow", lambda blocks: windows.append([b.num_rows for b in blocks]) or from_arrow(blocks)
    )
    monkeypatch.setattr("deniro_rt.batch.cli.RAY_WINDOW_ROWS", 16)
    monkeypatch.setattr("deniro_rt.batch.cli.WINDOW_BATCHES_PER_ACTOR", 1)  # 2 actors x 8 rows: 16 too
    out = tmp_path / "out"
    argv = [
        "--input",
        str(corpus),
        "--column",
        "review",
        "--output",
        str(out),
        "--precision",
        PRECISION,
        "--rows-per-shard",
        "16",
        "--sequences",
    ]
    assert batch_main(argv + extra) == 0
    assert windows == ([[8, 8], [8, 8], [4]] if extra else [])  # not every block at once
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    table = pq.read_table(out / "predictions")
    assert table.column_names == [
        "id",
        "review",
        "top1",
        "top1_score",
        "mask_positions",
        "token_ids",
        "token_strs",
        "scores",
        "sequences",
    ]
    assert table.column("id").to_pylist() == list(range(len(sentences)))
    reference = per_text(expected(sentences))
    assert as_fill(table.to_pydict()) == reference
    assert table.column("top1").to_pylist() == [r[0][0]["token_str"] for r in reference]
    saved = json.loads((out / "batch_config.json").read_text())
    assert saved["rows"] == len(sentences) and saved["ray"] == bool(extra) and saved["resumed_from_row"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reviews.parquet"]  # no temp folder left


@pytest.mark.parametrize("extra", [[], ["--ray", "--concurrency", "1"]], ids=["in-process", "ray-data"])
def test_batch_config_records_the_precision_provider_and_threads_that_ran(local_ray, tmp_path, extra):
    """Without --precision the config recorded "precision": null; bf16 or fp32 is chosen per machine."""
    source = tmp_path / "lines.txt"
    source.write_text("This is a great [MASK]!\nThe acting was [MASK].\n")
    assert batch_main(["--input", str(source), "--output", str(tmp_path / "o"), *extra]) == 0
    saved = json.loads((tmp_path / "o" / "batch_config.json").read_text())
    ran = {k: saved[k] for k in ("precision", "provider", "threads")}
    here = deniro_rt.FillMask(device="cpu").precision  # the default this machine runs (bf16 or fp32)
    threads = 1 if extra else usable_cores()  # a Ray actor runs its --cpus-per-worker (1)
    assert ran == {"precision": here, "provider": "CPUExecutionProvider", "threads": threads}
    assert saved["device"] == "cpu" and saved["rows"] == 2


def test_batch_command_reads_text_files_and_parquet_folders(tmp_path, sentences):
    source = tmp_path / "lines.txt"
    source.write_text("This is a great [MASK]!\n\nThe acting was [MASK].\n")
    assert batch_main(["--input", str(source), "--output", str(tmp_path / "o"), "--precision", PRECISION]) == 0
    table = pq.read_table(tmp_path / "o" / "predictions")
    texts = ["This is a great [MASK]!", "The acting was [MASK]."]
    assert table.column("text").to_pylist() == texts and "sequences" not in table.column_names
    assert table.column("token_ids").to_pylist() == [[[p["token"] for p in r]] for r in expected(texts)]
    folder = tmp_path / "parts"
    folder.mkdir()
    for n, part in enumerate((sentences[:10], sentences[10:25])):
        pq.write_table(pa.table({"text": part}), folder / f"part-{n}.parquet")
    assert (
        batch_main(
            [
                "--input",
                str(folder),
                "--output",
                str(tmp_path / "f"),
                "--precision",
                PRECISION,
                "--sequences",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    table = pq.read_table(tmp_path / "f" / "predictions")
    assert table.column("text").to_pylist() == sentences[:25]
    assert as_fill(table.to_pydict()) == per_text(expected(sentences[:25]))


def batch_error(capsys, argv) -> str:
    assert batch_main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar: the one error line


def test_batch_command_bad_input(tmp_path, corpus, capsys):
    missing = tmp_path / "nope.parquet"
    assert batch_error(capsys, ["--input", str(missing), "--output", str(tmp_path / "o")]) == (
        f"error: --input {missing} does not exist; pass a .parquet file, a folder of .parquet files, "
        f"or a .txt file with one text per line"
    )
    assert batch_error(capsys, ["--input", str(corpus), "--output", str(tmp_path / "o")]) == (
        f"error: --input {corpus} has no column 'text' (it has: id, review); pass --column with the text column"
    )
    unmasked = tmp_path / "unmasked.parquet"
    pq.write_table(pa.table({"text": ["a [MASK] movie", "no mask here", "a [mask] plot"]}), unmasked)
    assert batch_error(capsys, ["--input", str(unmasked), "--output", str(tmp_path / "o")]) == (
        "error: 2 of 3 rows of column 'text' have no [MASK] (rows 1, 2; first: 'no mask here') (the mask "
        "token is case-sensitive: write [MASK]); put [MASK] where a word should be predicted in every row, "
        "or filter those rows out first"
    )
    assert not (tmp_path / "o").exists()


def test_batch_command_text_files_name_lines_and_outputs_it_cannot_replace_are_refused(tmp_path, capsys, monkeypatch):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a [MASK] day\r\nthe [MASK] end\r\n")
    assert batch_main(["--input", str(crlf), "--output", str(tmp_path / "o"), "--precision", PRECISION]) == 0
    earlier = tmp_path / "o" / "predictions"
    assert pq.read_table(earlier).column("text").to_pylist() == ["a [MASK] day", "the [MASK] end"]  # no \r
    blanks = tmp_path / "blanks.txt"
    blanks.write_text("a [MASK] day\n\n\nhello\n")  # text 1 is line 4: messages name lines
    assert batch_error(capsys, ["--input", str(blanks), "--output", str(tmp_path / "b")]) == (
        "error: 1 of 2 rows of column 'text' have no [MASK] (lines 4; first: 'hello'); put [MASK] where a word "
        "should be predicted in every row, or filter those rows out first"
    )
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"a [MASK] day\ncaf\xe9 [MASK]\n")  # was a UnicodeDecodeError traceback
    assert batch_error(capsys, ["--input", str(latin1), "--output", str(tmp_path / "b")]) == (
        f"error: --input {latin1}: line 2 is not valid UTF-8; save the file as UTF-8"
    )
    # an earlier output read back would give two columns of one name, which parquet readers refuse
    assert batch_error(capsys, ["--input", str(earlier), "--output", str(tmp_path / "b")]) == (
        "error: --input has column(s) top1, top1_score, mask_positions, token_ids, token_strs, scores, which the "
        "output adds (is it an earlier output?); drop or rename them first"
    )
    inside = tmp_path / "inside"
    inside.mkdir()
    monkeypatch.chdir(inside)
    for output in (".", ".."):  # was a ValueError (".") or a whole fill then a failed rename ("..")
        assert batch_error(capsys, ["--input", str(crlf), "--output", output, "--overwrite"]) == (
            f"error: --output {Path(output).resolve()} is the working directory or holds it; pass a new folder, "
            "e.g. ./filled"
        )
    assert not list(tmp_path.glob("*.partial")) and list(inside.iterdir()) == []


def test_batch_command_keeps_an_existing_output(tmp_path, corpus, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    argv = ["--input", str(corpus), "--column", "review", "--output", str(out)]
    assert (
        batch_error(capsys, argv)
        == f"error: --output {out} exists and is not empty; pass another folder or --overwrite"
    )
    assert (out / "mine.txt").read_text() == "keep me"
    long_text = "good " * 600 + "[MASK] ."  # the model refuses it during the fill (after shards were written)
    monkeypatch.setattr("deniro_rt.batch.cli.check_lengths", lambda *args: None)  # else refused up front
    refused = tmp_path / "refused.parquet"
    pq.write_table(pa.table({"review": ["a [MASK] movie"] * 40 + [long_text]}), refused)
    failing = [
        "--input",
        str(refused),
        "--column",
        "review",
        "--output",
        str(out),
        "--overwrite",
        "--rows-per-shard",
        "8",
        "--batch-size",
        "8",
    ]
    assert "text 0 is 604 tokens" in batch_error(capsys, failing)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and not out.with_name("out.partial").exists()
    assert batch_main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_config.json", "predictions"]


def test_batch_command_refuses_an_output_holding_its_input_and_bad_worker_sizes(tmp_path, capsys):
    """--overwrite replaced a folder holding the input file (deleted it); a nan --cpus-per-worker or a negative
    --gpus-per-worker failed in Ray's own traceback after <output>.partial was started."""
    folder = tmp_path / "work"
    folder.mkdir()
    texts = folder / "texts.txt"
    texts.write_text("a [MASK] day\n")
    assert batch_error(capsys, ["--input", str(texts), "--output", str(folder), "--overwrite"]) == (
        f"error: --output {folder} is or holds --input {texts}, which the new output would replace; "
        "pass another --output"
    )
    assert [p.name for p in folder.iterdir()] == ["texts.txt"] and texts.read_text() == "a [MASK] day\n"
    argv = ["--input", str(texts), "--output", str(tmp_path / "o"), "--ray"]
    for flag, value, wanted in (
        ("--cpus-per-worker", "nan", "a positive number, got nan"),
        ("--cpus-per-worker", "0", "a positive number, got 0.0"),
        ("--gpus-per-worker", "-1", "0 or a positive number, got -1.0"),
        ("--gpus-per-worker", "nan", "0 or a positive number, got nan"),
    ):
        assert batch_error(capsys, argv + [flag, value]) == f"error: {flag} must be {wanted}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no output, no .partial


def test_resume_fills_a_damaged_shard_again_and_names_a_damaged_job_file(tmp_path, sentences, capsys, monkeypatch):
    """A shard damaged after it was written was counted as done and ended up in the output (which readers then
    refused); a damaged job.json was a JSONDecodeError traceback."""
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(sentences[:30]) + "\n")
    base = ["--input", str(corpus), "--precision", PRECISION, "--rows-per-shard", "10", "--batch-size", "10"]
    out, shards = tmp_path / "out", tmp_path / "out.partial" / "predictions"
    with monkeypatch.context() as patch:  # stopped at the very end: every shard written, nothing published
        patch.setattr("deniro_rt.batch.cli.finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert batch_main(["--output", str(out), *base]) == 130
    assert sorted(p.name for p in shards.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    (shards / "part-00001.parquet").write_bytes((shards / "part-00001.parquet").read_bytes()[:100])
    assert batch_main(["--output", str(out), "--resume", *base]) == 0
    assert batch_main(["--output", str(tmp_path / "whole"), *base]) == 0
    assert pq.read_table(out / "predictions").equals(pq.read_table(tmp_path / "whole" / "predictions"))
    assert json.loads((out / "batch_config.json").read_text())["resumed_from_row"] == 10
    with monkeypatch.context() as patch:
        patch.setattr("deniro_rt.batch.cli.finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert batch_main(["--output", str(tmp_path / "again"), *base]) == 130
    job = tmp_path / "again.partial" / "job.json"
    job.write_text("{")
    capsys.readouterr()
    assert batch_error(capsys, ["--output", str(tmp_path / "again"), "--resume", *base]) == (
        f"error: --resume: {job} is damaged (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)); drop --resume and pass --overwrite to start over"
    )


def test_a_killed_batch_run_resumes_to_the_uninterrupted_output(tmp_path, sentences, capsys, monkeypatch):
    """A real `python -m deniro_rt batch`, SIGKILLed once its first shards exist, then --resume: the same
    shards, byte for byte in content, as a run that was never interrupted. The resume names the input by
    another path to the same file (a relative one)."""
    import subprocess
    import time

    corpus = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": (sentences * 84)[:3000], "n": list(range(3000))}), corpus)
    base = ["--input", str(corpus), "--precision", PRECISION, "--rows-per-shard", "50", "--batch-size", "25"]
    killed = tmp_path / "killed"
    shards = tmp_path / "killed.partial" / "predictions"
    run = subprocess.Popen(
        [sys.executable, "-m", "deniro_rt", "batch", "--output", str(killed)] + base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (shards.is_dir() and len(list(shards.glob("part-*.parquet"))) >= 2) and time.monotonic() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.wait()
    written = len(list(shards.glob("part-*.parquet")))
    assert not killed.exists() and 2 <= written < 60, written  # killed mid-way: some shards, no output
    assert "holds an unfinished run; pass --resume" in batch_error(capsys, ["--output", str(killed)] + base)
    monkeypatch.chdir(tmp_path)
    assert batch_main(["--output", str(killed), "--resume"] + ["--input", "big.parquet"] + base[2:]) == 0
    assert batch_main(["--output", str(tmp_path / "whole")] + base) == 0
    resumed = pq.read_table(killed / "predictions")
    assert resumed.equals(pq.read_table(tmp_path / "whole" / "predictions"))
    assert resumed.column("n").to_pylist() == list(range(3000))
    assert json.loads((killed / "batch_config.json").read_text())["resumed_from_row"] >= 100
    check_resume_refusals(tmp_path, base, capsys)


def check_resume_refusals(tmp_path: Path, base: list[str], capsys) -> None:
    """--resume over a partial run of other options or an input edited in place, or over a complete output."""
    job = json.loads((tmp_path / "whole" / "batch_config.json").read_text())
    (tmp_path / "o2.partial").mkdir()
    (tmp_path / "o2.partial" / "job.json").write_text(json.dumps({**job, "batch_size": 5}))
    assert batch_error(capsys, ["--output", str(tmp_path / "o2"), "--resume"] + base).startswith(
        f"error: --resume: {tmp_path / 'o2.partial'} was written with other batch_size; resume with the same"
    )
    (tmp_path / "o2.partial" / "job.json").write_text(json.dumps({**job, "input_files": [["big.parquet", 1, 1]]}))
    assert batch_error(capsys, ["--output", str(tmp_path / "o2"), "--resume"] + base).startswith(  # edited in place
        f"error: --resume: {tmp_path / 'o2.partial'} was written with other input_files; resume with the same"
    )
    assert batch_error(capsys, ["--output", str(tmp_path / "whole"), "--resume"] + base) == (
        f"error: --resume: {tmp_path / 'whole'} is complete (no unfinished run in {tmp_path / 'whole.partial'}); "
        "nothing to resume (--overwrite without --resume fills it again)"
    )


@pytest.mark.parametrize(
    "option, value",
    [
        ("top_k", 3),
        ("truncation", True),
        ("sequences", True),
        ("precision", "int8"),
        ("model", "another-export"),
        ("column", "review"),
        ("batch_size", 5),
        ("rows_per_shard", 7),
    ],
)
def test_resume_refuses_every_option_that_decides_the_output(tmp_path, option, value):
    """A --resume with another value of any option that changes the shards would mix two outputs in one
    folder (only --batch-size and the input's stamp were checked: a --top-k 3 resume of a --top-k 5 run passed)."""
    from dataclasses import replace

    from deniro_rt.batch.cli import BatchConfig, open_staging, shard_name
    from deniro_rt.errors import DeniroError

    corpus = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a [MASK] ."] * 3, "review": ["b [MASK] ."] * 3}), corpus)
    staging, started = tmp_path / "out.partial", BatchConfig(input=str(corpus), output=str(tmp_path / "out"))
    assert open_staging(staging, started, rows=3) == 0
    pq.write_table(pa.table({"n": [0, 1, 2]}), staging / "predictions" / shard_name(0))  # a finished shard of 3 rows
    assert open_staging(staging, replace(started, resume=True, device="cuda"), rows=3) == 1  # the device may differ
    with pytest.raises(DeniroError, match=f"was written with other {option}; resume with the same input and options"):
        open_staging(staging, replace(started, resume=True, **{option: value}), rows=3)


def test_resume_without_the_job_file_says_it_is_missing(tmp_path):
    """A staging folder whose job.json was deleted was refused as "written with other batch_size, column, input,
    ..." (every option listed, none changed): the refusal now names the missing file and the ways on."""
    from dataclasses import replace

    from deniro_rt.batch.cli import BatchConfig, open_staging
    from deniro_rt.errors import DeniroError

    corpus = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a [MASK] ."] * 3}), corpus)
    staging, started = tmp_path / "out.partial", BatchConfig(input=str(corpus), output=str(tmp_path / "out"))
    assert open_staging(staging, started, rows=3) == 0
    (staging / "job.json").unlink()
    with pytest.raises(DeniroError) as caught:
        open_staging(staging, replace(started, resume=True), rows=3)
    assert str(caught.value) == (
        f"--resume: {staging / 'job.json'} is missing, so the input and options given now cannot be checked against "
        "the unfinished run's; put back the file the run wrote (the input and options it was started with), or drop "
        "--resume and pass --overwrite to start over"
    )


def test_ray_serve_ctrl_c_while_ray_imports_is_one_line(ctrl_c_while_importing):
    """python -m deniro_rt.serve.ray: Ctrl-C while Ray imported and started (seconds, before the SIGINT handler that
    tears the deployment down) was a KeyboardInterrupt traceback."""
    code, err = ctrl_c_while_importing("ray", "deniro_rt.serve.ray:run", ["--port", "0"])
    assert (code, err.strip().splitlines()[-1:]) == (130, ["interrupted before the deployment started"]), err[-3000:]
    assert "Traceback" not in err


def test_a_shard_is_on_disk_as_soon_as_it_is_full(tmp_path):
    """Rows arrive in batches of 4 for shards of 4 and 6: each full shard is written at once (what a killed run
    keeps), the rest waits for more rows or close(), and the shards hold every row once, in order."""
    from deniro_rt.batch.cli import ShardWriter, shard_name

    def rows(start: int, n: int):  # filled rows as the fill writes them: every mask kept by the window
        return pa.table({"n": list(range(start, start + n)), "mask_positions": [[1]] * n})

    for size, on_disk in ((4, [1, 2, 3]), (6, [0, 1, 2])):
        folder = tmp_path / str(size)
        folder.mkdir()
        writer, written = ShardWriter(folder, size, done=0), []
        for start in (0, 4, 8):
            writer.add(rows(start, 4))
            written.append(len(list(folder.glob("part-*.parquet"))))
        assert written == on_disk, size
        writer.close()
        shards = sorted(folder.glob("part-*.parquet"))
        assert [p.name for p in shards] == [shard_name(i) for i in range(len(shards))]
        assert [pq.read_table(p).num_rows for p in shards] == ([4, 4, 4] if size == 4 else [6, 6])
        assert pq.read_table(folder).column("n").to_pylist() == list(range(12))


def test_batch_command_names_the_extra_when_ray_is_missing(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = ["--input", str(corpus), "--column", "review", "--output", str(tmp_path / "o"), "--ray"]
    assert batch_error(capsys, argv) == (
        'error: --ray needs Ray Data, which is not installed; pip install "deniro[ray]", or leave out '
        "--ray/--concurrency/--address to fill in this process"
    )


# ---------------------------------------------------------------------- Ray Serve over HTTP
TOO_MANY_TEXTS = {  # --batching serve lowers --max-texts-per-request (64) to --max-batch-size (64): name both
    "app": '"inputs" has 65 texts; this server takes at most 64 per request (--max-texts-per-request); split the list',
    "serve": '"inputs" has 65 texts; this server takes at most 64 per request (--max-texts-per-request, capped by '
    "--max-batch-size 64: raise both to allow more); split the list",
}


@pytest.mark.parametrize("batching", ["app", "serve"])
def test_ray_serve_answers_over_http_like_fill(local_ray, serve_port, sentences, batching):
    import httpx

    from deniro_rt.serve.ray import RayServeConfig, start

    config = RayServeConfig(
        precision=PRECISION, port=serve_port, batching=batching, max_wait_ms=20, name=f"deniro-{batching}"
    )
    url = start(config)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").json()["status"] == "ok"
            single = client.post("/", json={"inputs": sentences[0], "parameters": {"top_k": 3}})
            assert single.status_code == 200 and single.json() == expected(sentences[0], top_k=3)
            listed = client.post("/fill", json={"inputs": sentences[:4]})
            assert listed.json() == expected(sentences[:4])
            bad = client.post("/", json={"inputs": "no mask here"})
            assert bad.status_code == 422 and "has no [MASK]" in bad.json()["error"]
            too_many = client.post("/", json={"inputs": sentences[:1] * 65})
            assert (too_many.status_code, too_many.json()) == (413, {"error": TOO_MANY_TEXTS[batching]})
            with ThreadPoolExecutor(8) as pool:  # concurrent clients share batches, each gets its own answer
                answers = list(pool.map(lambda t: client.post("/", json={"inputs": t}).json(), sentences))
            assert answers == [expected(t) for t in sentences]
            metrics = client.get("/metrics").text
            calls = float(re.search(r"^deniro_batch_size_count (\S+)$", metrics, re.M).group(1))
            assert calls < 2 + len(sentences)  # concurrent requests were batched together
    finally:
        serve.delete(config.name)


def test_ray_serve_options_reach_the_deployment():
    from deniro_rt.serve.ray import app_builder

    fixed = app_builder({"num_replicas": "2", "num_cpus": "0.5", "batching": "serve"})
    scaled = app_builder({"min_replicas": "1", "max_replicas": "4", "target_ongoing_requests": "8"})
    fixed_config = fixed._bound_deployment._deployment_config
    assert fixed_config.num_replicas == 2 and fixed_config.max_ongoing_requests == 256
    assert fixed._bound_deployment.ray_actor_options["num_cpus"] == 0.5
    autoscaling = scaled._bound_deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 4, 8)
    with pytest.raises(deniro_rt.DeniroError, match="unknown argument"):
        app_builder({"replicas": "2"})
    with pytest.raises(deniro_rt.DeniroError, match="argument --batching: invalid choice: 'ray'"):
        app_builder({"batching": "ray"})


def test_serve_batching_caps_a_request_at_the_batch_size():
    """@serve.batch fails an item larger than its max_batch_size with Ray's own RuntimeError (a 500): the
    app must refuse such a request itself (413) before it reaches the batch."""
    from deniro_rt.serve.ray import RayServeConfig

    assert RayServeConfig(batching="serve", max_batch_size=16).serve_config().max_texts_per_request == 16
    assert RayServeConfig(batching="app", max_batch_size=16).serve_config().max_texts_per_request == 64
    assert RayServeConfig(batching="serve", max_batch_size=8, max_queue=8).serve_config().texts_limit_flags() == (
        "--max-texts-per-request, capped by --max-queue 8 and --max-batch-size 8: raise them all to allow more"
    )
    assert RayServeConfig(batching="app", max_batch_size=8).serve_config().texts_limit_flags() == (
        "--max-texts-per-request"
    )


@pytest.mark.parametrize("extra", [[], ["--ray", "--concurrency", "1"]], ids=["in-process", "ray-data"])
def test_batch_command_reports_a_text_the_model_refuses(local_ray, tmp_path, capsys, extra, monkeypatch):
    """A refusal in the fill (the up-front checks skipped here) ends the run with one error line."""
    monkeypatch.setattr("deniro_rt.batch.cli.check_lengths", lambda *args: None)
    long_text = "good " * 600 + "[MASK] ."  # over the shipped model's 512 positions
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"text": ["a [MASK] movie", long_text]}), path)
    error = batch_error(capsys, ["--input", str(path), "--output", str(tmp_path / "o"), "--batch-size", "8"] + extra)
    refusal = (
        "text 1 is 604 tokens, more than the model's maximum of 512; shorten it, or pass "
        "--truncation to keep a window around the masks"  # the batch command's flag, not the runtime's argument
    )
    prefix = "error: rows 0-1: " if not extra else "error: a Ray worker refused a batch of up to --batch-size rows ("
    assert error.startswith(prefix) and refusal in error
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra", [[], ["--ray", "--concurrency", "1"]], ids=["in-process", "ray-data"])
def test_batch_command_names_the_rows_whose_masks_truncation_cut(local_ray, tmp_path, caplog, extra):
    """The runtime warned once per text, naming its place in one fill call (a batch of --batch-size rows), so
    "text 0" meant nothing to the user of the file; the run now warns once, naming the file's lines."""
    far = "[MASK] was the first word . " + "good " * 600 + "the end was [MASK] ."  # the second mask is cut
    path = tmp_path / "far.txt"
    path.write_text(f"a [MASK] day\n\na [MASK] day\n{far}\na [MASK] day\n{far}\n")  # texts 2 and 4: lines 4, 6
    argv = ["--input", str(path), "--output", str(tmp_path / "o"), "--truncation", "--batch-size", "2"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "masks of")  # not the runtime's per-call one (batch-relative numbers)
        with caplog.at_level(logging.WARNING, logger="deniro_rt.batch.cli"):
            assert batch_main(argv + ["--precision", PRECISION] + extra) == 0
    assert [r.getMessage() for r in caplog.records if r.name.startswith("deniro_rt")] == [
        "--truncation cut masks away in 2 of 5 rows filled (lines 4, 6): they lie outside the token window kept; "
        "those masks have mask_positions -1 and empty token_ids, token_strs and scores"
    ]
    positions = pq.read_table(tmp_path / "o" / "predictions").column("mask_positions").to_pylist()
    assert [-1 in p for p in positions] == [False, False, True, False, True]


def test_batch_command_names_the_extra_when_pyarrow_is_missing(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # the core install: no pyarrow
    argv = ["--input", str(corpus), "--column", "review", "--output", str(tmp_path / "o")]
    assert batch_error(capsys, argv) == (
        "error: the batch command reads and writes parquet with pyarrow, which is not installed; "
        'pip install "deniro[batch]" (or "deniro[ray]")'
    )
    assert not (tmp_path / "o").exists()


def test_workers_larger_than_any_node_are_refused_instead_of_hanging(local_ray, tmp_path, corpus, capsys):
    """Ray waits forever for an actor no node can hold: the batch job and the Serve deployment hung."""
    from deniro_rt.serve.ray import RayServeConfig, start

    argv = ["--input", str(corpus), "--column", "review", "--output", str(tmp_path / "o"), "--ray"]
    assert batch_error(capsys, argv + ["--cpus-per-worker", "4"]) == (
        "error: --cpus-per-worker 4 is more than any node of the Ray cluster has (the largest: 2 CPUs), so Ray "
        "would wait forever; pass --cpus-per-worker 2 or less"
    )
    assert batch_error(capsys, argv + ["--gpus-per-worker", "1"]).startswith(
        "error: --gpus-per-worker 1 is more than any node of the Ray cluster has (the largest: 0 GPUs)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.parquet"]  # nothing written
    with pytest.raises(deniro_rt.DeniroError, match=r"--num-cpus 3 is more than any node .* pass --num-cpus 2 or"):
        start(RayServeConfig(num_cpus=3, name="too-big"))
    with pytest.raises(deniro_rt.DeniroError, match=r"^3 replicas of --num-cpus 1 need 3 CPUs, the Ray cluster has 2"):
        start(RayServeConfig(num_replicas=3, num_cpus=1, name="too-many"))


def test_batch_command_names_a_column_that_is_not_text(tmp_path, capsys):
    """A numeric or binary column was reported as rows to "drop or fill"; the fix is another --column."""
    path = tmp_path / "typed.parquet"
    pq.write_table(
        pa.table({"id": [1, 2], "raw": [b"a [MASK]", b"b [MASK]"], "review": ["a [MASK]", "b [MASK]"]}), path
    )
    argv = ["--input", str(path), "--output", str(tmp_path / "o")]
    assert batch_error(capsys, argv + ["--column", "id"]) == (
        "error: --input column 'id' holds int64, not text; pass --column with the column of texts with [MASK] "
        "(the text columns: review)"
    )
    assert batch_error(capsys, argv + ["--column", "raw"]).startswith("error: --input column 'raw' holds binary, not")
    pq.write_table(pa.table({"id": [1, 2]}), path)
    assert batch_error(capsys, argv + ["--column", "id"]).endswith(
        "(the input has no text column; store the texts as strings)"
    )
    categorical = tmp_path / "categorical.parquet"  # pandas' category dtype: a dictionary of strings is text
    pq.write_table(pa.table({"text": pa.array(["a [MASK] day", "a [MASK] day"]).dictionary_encode()}), categorical)
    assert batch_main(["--input", str(categorical), "--output", str(tmp_path / "c"), "--precision", PRECISION]) == 0


def test_batch_command_finds_over_long_texts_before_any_work(tmp_path, capsys):
    """Without --truncation a text over the model's positions ended the run when the fill reached its
    batch (hours into a big file) and deleted the shards written so far; it is now found up front."""
    path = tmp_path / "long.txt"
    path.write_text("a [MASK] day\n\n" + "good " * 600 + "[MASK] .\n" + "[MASK] " + "bad " * 520 + "\n")
    argv = ["--input", str(path), "--output", str(tmp_path / "o"), "--precision", PRECISION]
    assert batch_error(capsys, argv) == (
        "error: 2 of 3 rows of column 'text' are longer than the model's 512 tokens (lines 3, 4; the first is "
        "604 tokens); pass --truncation to keep a window around their masks, or shorten or filter those rows"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.txt"]  # nothing written
    assert batch_main(argv + ["--truncation"]) == 0
    assert pq.read_table(tmp_path / "o" / "predictions").column("mask_positions").to_pylist()[1:] == [[509], [1]]


def test_a_text_the_length_check_skips_cannot_be_too_long():
    """check_lengths tokenizes only texts of 2 * characters + 2 over the positions: no text grows past that bound."""
    from tokenizers import Tokenizer

    from deniro_rt.models import DEFAULT_MODEL_DIR

    tokenizer = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    worst = ["İ" * 50, "東京" * 25, "😀" * 50, "!?" * 25, "é" * 50, "ﬁ" * 50, "a\u0301" * 25, "ǅ" * 50, "[MASK]" * 9]
    for text in worst:
        assert len(tokenizer.encode(text).ids) <= 2 * len(text) + 2, text


def check_message(column, config) -> str:
    """check_texts' refusal of `column` (a pyarrow ChunkedArray), as its message."""
    from deniro_rt.batch.cli import check_texts

    with pytest.raises(deniro_rt.DeniroError) as refused:
        check_texts(column, config)
    return str(refused.value)


def test_batch_checks_name_the_same_rows_read_in_chunks(monkeypatch):
    """The up-front checks read the column CHECK_CHUNK rows at a time: rows are numbered across chunks,
    the first bad text and the case hint come from any chunk, and the messages are those of one chunk."""
    from deniro_rt.batch.cli import BatchConfig

    config = BatchConfig(input="unused", output="unused")
    long_text = "good " * 600 + "[MASK] ."  # 604 tokens
    columns = {
        "not text": ["a [MASK]", None, "b [MASK]", "c [MASK]", "d [MASK]", "  ", "e [MASK]"],
        "no mask": ["a [MASK]", "b [MASK]", "c [MASK]", "no mask here", "d [MASK]", "e [MASK]", "a [mask] f"],
        "too long": ["a [MASK]", "b [MASK]", long_text, "c [MASK]", "d [MASK]", "x " + long_text, "e [MASK]"],
    }
    expected = {
        "not text": "2 of 7 rows of column 'text' are empty or not text (rows 1, 5); drop or fill those rows first",
        "no mask": "2 of 7 rows of column 'text' have no [MASK] (rows 3, 6; first: 'no mask here') (the mask token "
        "is case-sensitive: write [MASK]); put [MASK] where a word should be predicted in every row, or filter "
        "those rows out first",
        "too long": "2 of 7 rows of column 'text' are longer than the model's 512 tokens (rows 2, 5; the first is "
        "604 tokens); pass --truncation to keep a window around their masks, or shorten or filter those rows",
    }
    for kind, texts in columns.items():
        column = pa.chunked_array([pa.array(texts[:4]), pa.array(texts[4:])], pa.string())
        assert check_message(column, config) == expected[kind], kind  # one check chunk
        monkeypatch.setattr("deniro_rt.batch.cli.CHECK_CHUNK", 2)
        assert check_message(column, config) == expected[kind], kind  # four check chunks
        monkeypatch.undo()


def test_batch_input_checks_hand_their_freed_buffers_back(tmp_path, monkeypatch):
    """Decoding the input leaves buffers in Arrow's pool, freed but held (pq.read_table of a million short rows:
    +111 MB beside the 57 MB table): the checks release them, after the last one, before the model loads."""
    from deniro_rt.batch.cli import BatchConfig, check_input, read_input

    events = []

    class Pool:  # what pa.default_memory_pool() gives check_input: records the release
        def release_unused(self):
            events.append("release")

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a [MASK] film"] * 1000}), path)
    monkeypatch.setattr(pa, "default_memory_pool", Pool)
    monkeypatch.setattr("deniro_rt.batch.cli.check_lengths", lambda *args: events.append("lengths"))
    source, lines = read_input(path, "text")
    check_input(source, BatchConfig(input=str(path), output="unused"), lines)
    assert events == ["lengths", "release"]


def test_batch_checks_hold_one_chunk_of_strings_at_a_time(monkeypatch):
    """check_texts turned the whole column into one Python list (+109 MB at a million 60-character rows, next
    to the 57 MB table): the checks of 64 chunks now allocate no more than about those of one."""
    import tracemalloc

    from deniro_rt.batch.cli import BatchConfig, check_texts

    monkeypatch.setattr("deniro_rt.batch.cli.CHECK_CHUNK", 256)
    config = BatchConfig(input="unused", output="unused")
    peaks = []
    for rows in (256, 64 * 256):
        column = pa.chunked_array([pa.array([f"row {i} was a [MASK] film, " + "x" * 60 for i in range(rows)])])
        check_texts(column, config)  # imports and caches out of the measurement
        tracemalloc.start()
        try:
            check_texts(column, config)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < 2 * peaks[0], peaks  # a list of every row: about 40x
