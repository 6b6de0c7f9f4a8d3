"""What the word-embedding table's size levers cost the shipped model (issue 23, item 4), measured on its own ONNX.

The shipped graph stores the 20,000 x 384 table as int8 rows with one fp32 scale each (7.76 MB of its 19.5 MB),
read by the lookup and by the tied projector. Each variant rewrites those rows in place, in the same int8 + scale
format, so the graph and the runtime stay as they are, and is scored on the DeNiro protocol (IMDB test reviews,
256-token chunks, whole-word masking once with seed 1234, train/'s seeded review sample), against the shipped
table on the same masks:

- `mixed-N`: the N most frequent pieces (counted on train reviews) keep their 8-bit rows, every other row is
  4-bit (levels -7..7, its own scale): the mixed-precision table train.shrink --mixed estimates in PyTorch.
- `int4`: every row 4-bit.
- `rank-R`: the table replaced by its best rank-R approximation (SVD), rows re-rounded to int8: a factorised
  table ([vocab, R] int8 + [R, 384] fp32) stored as its product.

What a variant saves pays for vocabulary pieces the 20 MB cap made train.prune drop (pruning to 20,000 pieces
cost the H100 model 2.4 % perplexity). The rows beyond 20,000 are not in this artifact, so the full-vocabulary
variants themselves need the unpruned weights a GPU sweep brings back (train.shrink --mixed).

    .venv/bin/python experiments/table_levers.py --reviews 2500 > bench/results/cpu-2core-minilm/size-levers/levers.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.parity import EvalSettings, eval_chunks  # noqa: E402
from deniro_rt import FillMask  # noqa: E402
from deniro_rt.artifact import MANIFEST, sha256_file  # noqa: E402
from deniro_rt.data import load_text_splits  # noqa: E402
from train.shrink import piece_order  # noqa: E402

TABLE = "mlm.model.distilbert.embeddings.word_embeddings.weight"
DEFAULT_VARIANTS = "shipped,mixed-2000,mixed-4000,mixed-8000,int4,rank-256,rank-192,rank-128"


def round_rows(table: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row rounding to levels -top..top: (int8 values [vocab, dim], fp32 scales [vocab])."""
    scale = np.maximum(np.abs(table).max(axis=1), 1e-12) / top  # [vocab]
    return np.clip(np.round(table / scale[:, None]), -top, top).astype(np.int8), scale.astype(np.float32)


def variant_rows(table: np.ndarray, name: str, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 rows and scales of one variant of the (dequantized) shipped table [vocab, dim]."""
    if name == "int4":
        return round_rows(table, 7)
    if name.startswith("mixed-"):
        q, scale = round_rows(table, 7)
        frequent = order[: int(name.split("-")[1])]
        q[frequent], scale[frequent] = round_rows(table[frequent], 127)
        return q, scale
    if name.startswith("rank-"):
        u, s, vt = np.linalg.svd(table.astype(np.float64), full_matrices=False)
        rank = int(name.split("-")[1])
        return round_rows(((u[:, :rank] * s[:rank]) @ vt[:rank]).astype(np.float32), 127)
    raise SystemExit(f"unknown variant {name!r}: shipped, int4, mixed-N or rank-R")


def table_bytes(name: str, vocab: int, dim: int) -> int:
    """Stored size of the table as the variant would ship it (values + fp32 row scales)."""
    if name == "shipped":
        return vocab * dim + 4 * vocab
    if name == "int4":
        return vocab * dim // 2 + 4 * vocab
    if name.startswith("mixed-"):
        n8 = int(name.split("-")[1])
        return n8 * dim + (vocab - n8) * dim // 2 + 4 * vocab
    rank = int(name.split("-")[1])
    return vocab * rank + 4 * vocab + 4 * rank * dim  # int8 [vocab, rank] + scales + fp32 [rank, dim]


def load_table(graph: Path) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The graph, its table's int8 rows [vocab, dim] and their fp32 scales [vocab]."""
    proto = onnx.load(str(graph))
    inits = {i.name: i for i in proto.graph.initializer}
    return proto, numpy_helper.to_array(inits[TABLE + "_int8"]), numpy_helper.to_array(inits[TABLE + "_scale"])


def write_variant(src: Path, dst: Path, name: str, order: np.ndarray) -> None:
    """A copy of the artifact whose fast.onnx holds the variant's table, its manifest hash updated."""
    shutil.copytree(src, dst)
    proto, q, scale = load_table(src / "fast.onnx")
    if name != "shipped":
        q, scale = variant_rows(q.astype(np.float32) * scale[:, None], name, order)
    for init in proto.graph.initializer:
        if init.name in (TABLE + "_int8", TABLE + "_scale"):
            init.CopyFrom(numpy_helper.from_array(q if init.name.endswith("_int8") else scale, init.name))
    onnx.save(proto, str(dst / "fast.onnx"))
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["files"]["fast.onnx"] = sha256_file(dst / "fast.onnx")
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def score(folder: Path, reviews: list[str], limit: int) -> dict:
    fm = FillMask(folder, device="cpu", precision="fp32")
    settings = EvalSettings(chunk_size=256, eval_seed=1234, mlm_probability=0.15)
    return fm.perplexity(eval_chunks(fm.tokenizer, reviews, limit, settings, fm.mask_id), batch_size=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deniro_rt/models/default")
    parser.add_argument("--dataset", default="../shared/data/imdb")
    parser.add_argument("--reviews", type=int, default=2500, help="test reviews scored (train/'s seeded sample)")
    parser.add_argument("--count-reviews", type=int, default=5000, help="train reviews the piece counts come from")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    args = parser.parse_args()
    splits = load_text_splits(args.dataset, ["train", "test"])
    tokenizer = AutoTokenizer.from_pretrained(args.model)  # the artifact's own tokenizer files
    order = piece_order(tokenizer, splits["train"][: args.count_reviews])  # as train.prune and export count them
    vocab, dim = load_table(Path(args.model) / "fast.onnx")[1].shape
    names = ["shipped"] + [n for n in args.variants.split(",") if n and n != "shipped"]  # the reference first
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            write_variant(Path(args.model), Path(tmp) / name, name, order)
            rows.append({"variant": name, "table_mb": table_bytes(name, vocab, dim) / 1e6})
            rows[-1] |= score(Path(tmp) / name, splits["test"], args.reviews)
            rows[-1]["vs_shipped"] = rows[-1]["perplexity"] / rows[0]["perplexity"] - 1
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"model": args.model, "reviews": args.reviews, "vocab": vocab, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
