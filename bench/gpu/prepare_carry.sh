#!/usr/bin/env bash
# Prepare, on this machine, what the GPU run carries, then check every call's transfer budget.
#   bash bench/gpu/prepare_carry.sh            # .carry/imdb: the three IMDB parquets (42 MB), checksummed
#   bash bench/gpu/prepare_carry.sh --ortgpu   # also .ortgpu/part1+2: onnxruntime-gpu + the extra wheels (~3 min, PyPI)
# Both folders are git-ignored (.gitignore). The three device calls are in bench/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$(cd "${IMDB:-../shared/data/imdb}" && pwd)  # absolute: the checksum check runs inside .carry/imdb
TOOLS=${ORT_TOOLS:-../shared/tools/ort-gpu}
# The GPU image has transformers 5.x / huggingface_hub 1.x / tokenizers 0.23 and no Optimum; the
# project's pinned set (export's Optimum layout, bench's optimum-ort engine) rides in part1 as wheels.
WHEELS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0)

rm -rf .carry && mkdir -p .carry/imdb
for split in train test unsupervised; do cp "$SRC/$split.parquet" .carry/imdb/; done
(cd .carry/imdb && grep -E ' (train|test|unsupervised)\.parquet$' "$SRC/SHA256SUMS" | sha256sum -c --quiet -)
echo ".carry/imdb: $(du -sh .carry/imdb | cut -f1), checksums ok"

if [ "${1:-}" = "--ortgpu" ]; then
  bash "$TOOLS/prepare.sh" "${WHEELS[@]}"
fi
if [ ! -d .ortgpu ]; then
  echo "note: .ortgpu/ not prepared (run with --ortgpu, ~3 min); budget of the data call only:"
  bash "$TOOLS/budget.sh" .carry
else
  bash "$TOOLS/budget.sh" .ortgpu/part1 .carry .ortgpu/part2
fi
