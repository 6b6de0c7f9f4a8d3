"""The batch job's input read a piece at a time (deniro_rt/batch/source.py): shards hold exactly what the whole
table pq.read_table gives held (rows and chunks, so the fill's batches), the checks read the text column alone,
the fill one shard's batches, and row numbers, --resume and errors stay those of the whole input."""

from __future__ import annotations

import json

import pytest

import deniro_rt
from deniro_rt.batch import main as batch_main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PRECISION = "fp32"


def rows(start: int, stop: int, text: str = "row {} was a [MASK] film .") -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, stop), pa.int64()),
            "text": [text.format(i) for i in range(start, stop)],
            "kind": pa.array([f"k{i % 3}" for i in range(start, stop)]).dictionary_encode(),
        }
    )


@pytest.fixture
def folder(tmp_path):
    """Files (sorted by path, one in a sub-folder, one empty) of row groups smaller than the test's shards."""
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    pq.write_table(rows(0, 100), folder / "a.parquet", row_group_size=30)
    pq.write_table(rows(100, 100), folder / "b-empty.parquet")
    pq.write_table(rows(100, 101), folder / "c.parquet")
    pq.write_table(rows(101, 250), folder / "sub" / "d.parquet", row_group_size=40)
    return folder


def batch_error(capsys, argv) -> str:
    assert batch_main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_shards_hold_the_chunks_the_whole_read_held(tmp_path, folder):
    """The fill's batches are cut at the whole table's chunks (row groups, and pyarrow's 131,072-row scan batches
    within one): every shard must be whole.slice(start, rows) chunk for chunk, from any --resume row on."""
    from deniro_rt.batch.source import ParquetInput, shards

    big = tmp_path / "big.parquet"  # a row group of 200,000 rows: read as chunks of 131,072 and 68,928
    pq.write_table(pa.table({"n": range(300_000), "text": ["a [MASK]"] * 300_000}), big, row_group_size=200_000)
    hive = tmp_path / "hive"  # partition columns added, columns of another order or missing: scanned, not as stored
    for key, part in (("1", rows(0, 90)), ("2", rows(90, 150).select(["text", "id"]))):
        (hive / f"key={key}").mkdir(parents=True)
        pq.write_table(part, hive / f"key={key}" / "part.parquet", row_group_size=25)
    inputs = ((folder, (1, 7, 30, 50, 64, 250, 999)), (big, (50_000, 131_072, 140_000)), (hive, (1, 20, 64)))
    for path, sizes in inputs:
        whole = pq.read_table(path)
        for size in sizes:
            for first_row in (0, size * (whole.num_rows // size // 2)):
                got = list(shards(ParquetInput(path), first_row, size))
                wanted = [whole.slice(s, size) for s in range(first_row, whole.num_rows, size)]
                assert len(got) == len(wanted), (path.name, size)
                for shard, expected in zip(got, wanted):
                    assert shard.equals(expected) and shard.schema.equals(expected.schema, check_metadata=True)
                    assert [len(c) for c in shard.column(0).chunks] == [len(c) for c in expected.column(0).chunks]
                    assert [b.num_rows for b in shard.to_batches(max_chunksize=16)] == [
                        b.num_rows for b in expected.to_batches(max_chunksize=16)
                    ]


def test_checks_read_the_text_column_alone_and_the_fill_a_shard_at_a_time(tmp_path, monkeypatch):
    """The whole input was read into memory before the checks: the checks now hold only text-column chunks and
    the fill only the batches of the shard it fills (Arrow's allocations stay far under the input's size)."""
    from deniro_rt.batch import cli
    from deniro_rt.batch.source import ParquetInput, shards

    path = tmp_path / "wide.parquet"
    table = rows(0, 20_000).append_column("blob", pa.array(["x" * 500] * 20_000))  # 10 MB besides the texts
    pq.write_table(table, path, row_group_size=500)
    size = table.nbytes
    del table  # only what the job holds counts
    peaks = {"checks": 0, "fill": 0}

    def note(phase: str) -> None:
        peaks[phase] = max(peaks[phase], pa.total_allocated_bytes())

    add = cli.BadRows.add
    monkeypatch.setattr(cli.BadRows, "add", lambda self, *a: (note("checks"), add(self, *a))[1])

    class Worker:  # the fill without a model: its rows as filled, every mask kept
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, batch):
            note("fill")
            return batch.append_column("mask_positions", pa.array([[1]] * batch.num_rows, pa.list_(pa.int32())))

    monkeypatch.setattr("deniro_rt.batch.ray.FillMaskBatch", Worker)
    argv = ["--input", str(path), "--output", str(tmp_path / "o"), "--rows-per-shard", "500", "--batch-size", "100"]
    assert batch_main(argv) == 0
    assert pq.read_table(tmp_path / "o" / "predictions").drop_columns("mask_positions").equals(pq.read_table(path))
    assert 0 < peaks["checks"] < size / 10 and 0 < peaks["fill"] < size / 10, (peaks, size)
    resumed = [pa.total_allocated_bytes() for _ in shards(ParquetInput(path), 19_000, 500)]  # rows before: read
    assert max(resumed) < size / 10, (resumed, size)


def test_errors_name_rows_of_the_whole_input_across_files_and_row_groups(tmp_path, folder, capsys, monkeypatch):
    monkeypatch.setattr("deniro_rt.batch.cli.CHECK_CHUNK", 16)  # chunks cut across row groups and files too
    out = tmp_path / "o"
    bad = pq.read_table(folder).to_pydict()
    cases = {
        "empty or not text (rows 5, 100, 247)": {5: None, 100: " ", 247: None},
        "no [MASK] (rows 31, 160; first: 'plain')": {31: "plain", 160: "plain too"},
        "longer than the model's 512 tokens (rows 99, 101;": {99: "good " * 600 + "[MASK]", 101: "[MASK] " * 520},
    }
    for wanted, edits in cases.items():
        texts = list(bad["text"])
        for row, text in edits.items():
            texts[row] = text
        path = tmp_path / "edited"
        path.mkdir(exist_ok=True)
        for start, stop, name in ((0, 120, "a"), (120, 250, "b")):  # the same rows in other files
            pq.write_table(pa.table({"text": texts[start:stop]}), path / f"{name}.parquet", row_group_size=45)
        assert wanted in batch_error(capsys, ["--input", str(path), "--output", str(out)])
    assert not out.exists() and not out.with_name("o.partial").exists()


def test_a_folder_fills_and_resumes_like_one_table(tmp_path, folder, monkeypatch):
    """Shards of 64 rows cut across row groups and files; a run stopped after its shards were written, its last
    shards deleted, resumes to the uninterrupted output, file for file, byte for byte."""
    base = ["--input", str(folder), "--precision", PRECISION, "--rows-per-shard", "64", "--batch-size", "24"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert batch_main(["--output", str(whole), *base]) == 0
    table = pq.read_table(whole / "predictions")
    assert table.column("id").to_pylist() == list(range(250))
    texts = pq.read_table(folder).column("text").to_pylist()
    filled = deniro_rt.fill(texts, precision=PRECISION)
    assert table.column("token_ids").to_pylist() == [[[p["token"] for p in r]] for r in filled]
    with monkeypatch.context() as patch:  # stopped at the very end: every shard written, nothing published
        patch.setattr("deniro_rt.batch.cli.finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert batch_main(["--output", str(resumed), *base]) == 130
    shards = sorted((tmp_path / "resumed.partial" / "predictions").iterdir())
    assert [p.name for p in shards] == [f"part-0000{i}.parquet" for i in range(4)]
    for late in shards[2:]:
        late.unlink()
    assert batch_main(["--output", str(resumed), "--resume", *base]) == 0
    assert json.loads((resumed / "batch_config.json").read_text())["resumed_from_row"] == 128
    for name in [p.name for p in shards]:
        assert (resumed / "predictions" / name).read_bytes() == (whole / "predictions" / name).read_bytes()


def test_a_file_that_is_not_parquet_is_named_before_any_work_and_a_damaged_page_ends_the_run(tmp_path, capsys):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["a [MASK] film"] * 10}), folder / "a.parquet")
    (folder / "z.parquet").write_text("not parquet")  # the folder's schema comes from a.parquet alone
    out = tmp_path / "o"
    error = batch_error(capsys, ["--input", str(folder), "--output", str(out)])
    assert error.startswith(f"error: --input {folder} is not readable as parquet (") and error.endswith(
        "; pass a .parquet file, a folder of them, or a .txt file with one text per line"
    )
    damaged = tmp_path / "damaged.parquet"  # the text column reads (the checks pass), the blob column does not
    pq.write_table(
        pa.table({"text": ["a [MASK] film"] * 100, "blob": ["x" * 50] * 100}),
        damaged,
        compression="none",
        use_dictionary=False,
    )
    page = pq.read_metadata(damaged).row_group(0).column(1).data_page_offset
    data = bytearray(damaged.read_bytes())
    data[page : page + 16] = b"\xff" * 16
    damaged.write_bytes(bytes(data))
    error = batch_error(capsys, ["--input", str(damaged), "--output", str(out), "--precision", PRECISION])
    assert error.startswith(f"error: --input {damaged} is not readable as parquet (Couldn't deserialize thrift")
    (folder / "z.parquet").unlink()  # a later file whose column does not cast to the first file's type
    pq.write_table(pa.table({"text": ["b [MASK] film"], "n": [[1, 2]]}), folder / "b.parquet")
    pq.write_table(pa.table({"text": ["a [MASK] film"] * 10, "n": range(10)}), folder / "a.parquet")
    assert batch_error(capsys, ["--input", str(folder), "--output", str(out), "--precision", PRECISION]) == (
        f"error: --input {folder} is not readable as parquet ({folder / 'b.parquet'}: Unsupported cast from "
        "list<element: int64> to int64 using function cast_int64); pass a .parquet file, a folder of them, or a "
        ".txt file with one text per line"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.parquet", "parts"]  # no output, no .partial


def test_ray_windows_grow_with_the_pool_so_model_loads_stay_rare(tmp_path):
    """Each --ray window is a Ray dataset whose actors start and load the model again: a fixed 262,144 rows
    gave 64 actors of 256-row batches 16 batches each between loads; a window now holds at least 256 batches an
    actor, in whole shards, and never less than RAY_WINDOW_ROWS."""
    import pyarrow as pa

    from deniro_rt.batch.cli import BatchConfig, ray_windows, window_rows
    from deniro_rt.batch.source import TableInput

    config = BatchConfig(input="x", output="y", batch_size=256, rows_per_shard=8192)
    assert window_rows(config, 1) == window_rows(config, 4) == 262_144
    assert window_rows(config, 64) == 64 * 256 * 256
    small = BatchConfig(input="x", output="y", batch_size=4, rows_per_shard=10)
    source = TableInput(pa.table({"text": [f"a [MASK] {i}" for i in range(45)]}))
    small_windows = [[b.num_rows for b in w] for w in ray_windows(source, 0, small, pool=2)]
    assert small_windows == [[4, 4, 2] * 4 + [4, 1]]  # 45 rows < 262,144: one window of 5 whole shards
