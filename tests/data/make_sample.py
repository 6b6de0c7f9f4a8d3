"""Cut tests/data/imdb-sample/ from the full IMDB parquet copy, deterministically.

    python tests/data/make_sample.py [--source ../shared/data/imdb]

Every 50th review of train and test (500 each; the rows are ordered neg then pos, so both labels are
there, 250 each) and every 100th of unsupervised (500). These are exactly the reviews the test suite
reads from the full copy (tests/conftest.py takes [::50]), so a test sees the same texts either way.
Writes the three parquet files (stanfordnlp/imdb schema: text string, label int64) and SHA256SUMS.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
OUT = HERE / "imdb-sample"
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "imdb"
STRIDE = {"train": 50, "test": 50, "unsupervised": 100}


def cut(source: Path, out: Path) -> list[str]:
    sums = []
    for split, stride in STRIDE.items():
        table = pq.read_table(source / f"{split}.parquet", columns=["text", "label"])
        sample = table.take(list(range(0, table.num_rows, stride)))
        path = out / f"{split}.parquet"
        # Fixed writer settings so the bytes (and SHA256SUMS) are reproducible.
        pq.write_table(sample, path, compression="zstd", compression_level=19, write_statistics=False)
        sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of the full <split>.parquet files")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print("\n".join(cut(args.source, OUT)))


if __name__ == "__main__":
    main()
