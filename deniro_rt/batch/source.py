"""The batch job's input, read a piece at a time (cli.py: python -m deniro_rt batch).

A parquet file or folder is never read whole: its rows are counted from the files' footers, the up-front
checks read the text column alone, a chunk at a time, and the fill reads SCAN_ROWS rows at a time (shards()).
pyarrow is imported inside functions (the core install has none).

pq.read_table(path) scans pq.ParquetDataset(path) and its record batches become the chunks of the table it
returns: a file's row groups, cut every SCAN_ROWS rows. The fill's batches were cut at those chunks
(table.slice(...).to_batches(batch_size)); the shards here are built from the same batches (ParquetFile.
iter_batches of each row group for a file read as stored, the same scan for the others), so they hold the
same chunks and the fill makes the same batches as from the whole table: the output does not change by a byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DeniroError

SCAN_ROWS = 131_072  # pyarrow's default scan batch: pq.read_table's chunks within a row group (the fill cuts there)
SCAN_READAHEAD = 0  # batches a row group's scan reads ahead (pyarrow's default 16: 2M rows at once)


def unreadable(path: Path, exc: Exception, file: str | None = None) -> DeniroError:
    """file: the folder's file that failed (a scan names none: a column of a later file that does not cast to
    the first file's type was an ArrowNotImplementedError traceback)."""
    reason = " ".join(str(exc).split())  # one line: Arrow's messages can span several
    where = f"{file}: " if file and path.is_dir() else ""
    return DeniroError(
        f"--input {path} is not readable as parquet ({where}{reason}); pass a .parquet file, "
        f"a folder of them, or a .txt file with one text per line"
    )


class ParquetInput:
    """A parquet file or folder as pq.read_table(path) would read it (same files, order, schema, chunks),
    scanned file by file. The files' footers are read here, so a file that is not parquet is named now."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            dataset = pq.ParquetDataset(path)  # what pq.read_table reads: its files, schema and hive partitions
            self.fragments = dataset.fragments
            self.num_rows = sum(fragment.metadata.num_rows for fragment in self.fragments)
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(path, exc) from exc
        self.schema = dataset.schema
        self.column_names = self.schema.names

    def column(self, name: str) -> ColumnReader:
        return ColumnReader(self, name)

    def batches(self, columns: list[str] | None = None, rows: int = SCAN_ROWS) -> Iterator:
        """Record batches of every row in order (of `columns`; None: all), at most `rows` rows each, cut at
        row groups: with the default `rows`, the chunks of pq.read_table(path)."""
        import pyarrow as pa

        for fragment in self.fragments:
            try:
                if self.as_stored(fragment):
                    yield from file_batches(fragment, columns, rows)
                else:
                    yield from self.scanned_batches(fragment, columns, rows)
            except (pa.ArrowException, OSError) as exc:  # a damaged page, a column of another type
                raise unreadable(self.path, exc, fragment.path) from exc

    def as_stored(self, fragment) -> bool:
        """Whether the file's rows are read as stored: its schema is the input's, no hive partition adds a
        column, and it has row groups (pq.read_table gives an empty file one empty chunk)."""
        import pyarrow.dataset as ds

        plain = fragment.partition_expression.equals(ds.scalar(True))
        return plain and bool(fragment.row_groups) and fragment.physical_schema.equals(self.schema, check_metadata=True)

    def scanned_batches(self, fragment, columns: list[str] | None, rows: int) -> Iterator:
        """A file as the dataset scan reads it (its columns cast and ordered as the input's, hive partition
        columns added), one row group at a time: a scan of a whole file decodes ahead of its reader into a queue
        of tens of MB."""
        import pyarrow.dataset as ds

        for group in fragment.row_groups or [None]:  # a file without row groups: its one (empty) scan
            part = fragment if group is None else fragment.subset(row_group_ids=[group.id])
            scanner = ds.Scanner.from_fragment(
                part, schema=self.schema, columns=columns, batch_size=rows, batch_readahead=SCAN_READAHEAD
            )
            yield from scanner.to_batches()


def file_batches(fragment, columns: list[str] | None, rows: int) -> Iterator:
    """A file's rows as stored, read `rows` at a time (the scan decodes a whole row group at once: a million
    short rows are ~60 MB), cut at row groups as the scan cuts them."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(fragment.path, filesystem=fragment.filesystem) as file:
        for group in range(file.num_row_groups):
            yield from file.iter_batches(batch_size=rows, row_groups=[group], columns=columns)


class TableInput:
    """An input already in memory (a text file's lines), with ParquetInput's interface."""

    def __init__(self, table):
        self.table, self.schema = table, table.schema
        self.num_rows, self.column_names = table.num_rows, table.column_names

    def column(self, name: str):
        return self.table.column(name)

    def batches(self, columns: list[str] | None = None, rows: int = SCAN_ROWS) -> Iterator:
        return iter(self.table.to_batches())  # its own chunks, as the fill sliced the table


class ColumnReader:
    """One column of a ParquetInput for the up-front checks: its length and its values a chunk at a time,
    read from the files alone (the other columns are not read)."""

    def __init__(self, source: ParquetInput, name: str):
        self.source, self.name = source, name

    def __len__(self) -> int:
        return self.source.num_rows

    def chunks(self, rows: int) -> Iterator[tuple[int, list]]:
        """(first row, the values as Python objects) of consecutive runs of at most `rows` rows."""
        start = 0
        for batch in self.source.batches([self.name], rows):
            yield start, batch.column(0).to_pylist()
            start += batch.num_rows


def shards(source, first_row: int, rows: int) -> Iterator:
    """The input's rows from first_row on as tables of `rows` rows (the last may be shorter), each exactly
    whole.slice(start, rows) of the whole input read at once (same chunks), holding only the scanned batches
    a shard overlaps."""
    import pyarrow as pa

    window, window_start, window_end = [], 0, 0  # scanned batches held, the rows they span
    start = first_row
    batches = source.batches()
    while start < source.num_rows:
        end = min(start + rows, source.num_rows)
        while window_end < end:
            batch = next(batches)
            window.append(batch)
            window_end += batch.num_rows
            # batches ending at or before `start` go at once (a --resume reads every row before first_row):
            # the whole table's slice skips those chunks too, and keeps an empty one after the first it takes
            while window and window_start + window[0].num_rows <= start:
                window_start += window.pop(0).num_rows
        yield pa.Table.from_batches(window, source.schema).slice(start - window_start, end - start)
        start = end
        while window and window_start + window[0].num_rows <= start:
            window_start += window.pop(0).num_rows
