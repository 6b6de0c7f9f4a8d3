#!/usr/bin/env bash
# Prepare, on this machine, what the GPU run carries, then check every call's transfer budget.
#   bash bench/gpu/prepare_carry.sh            # .carry/text (IMDB train+test, xz, 17.6 MB) + .carry/minilm (fp16, 45.5 MB)
#   bash bench/gpu/prepare_carry.sh --ortgpu   # also .ortgpu/part1+2: onnxruntime-gpu + the extra wheels (~3 min, PyPI)
# Both folders are git-ignored (.gitignore). The three device calls are in bench/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$(cd "${IMDB:-../shared/data/imdb}" && pwd)
TOOLS=${ORT_TOOLS:-../shared/tools/ort-gpu}
PY=${PYTHON:-.venv/bin/python}
# The GPU image has transformers 5.x / huggingface_hub 1.x / tokenizers 0.23 and no Optimum; the
# project's pinned set (export's Optimum layout, bench's optimum-ort engine) rides in part1 as wheels.
WHEELS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0)

(cd "$SRC" && grep -E ' (train|test)\.parquet$' SHA256SUMS | sha256sum -c --quiet -)  # the source is intact
rm -rf .carry && mkdir -p .carry
# Text as xz'd JSON lines (parquet's zstd gives 21 MB, too much beside part2); ~1.5 min, both splits at once.
"$PY" bench/gpu/carry.py pack-text "$SRC" .carry/text
"$PY" bench/gpu/carry.py init .carry/minilm  # MiniLM (PyPI package) as DistilBERT, fp16

if [ "${1:-}" = "--ortgpu" ]; then
  bash "$TOOLS/prepare.sh" "${WHEELS[@]}"
fi
if [ ! -d .ortgpu ]; then
  echo "note: .ortgpu/ not prepared (run with --ortgpu, ~3 min); budget of the MiniLM call only:"
  bash "$TOOLS/budget.sh" .carry/minilm
else
  bash "$TOOLS/budget.sh" .ortgpu/part1 .carry/minilm
  # call 3 carries two paths: part2 + the text (budget.sh sizes one path a call)
  mkdir -p /tmp/deniro-call3 && rm -rf /tmp/deniro-call3/* && cp -r .ortgpu/part2 .carry/text /tmp/deniro-call3/
  bash "$TOOLS/budget.sh" /tmp/deniro-call3
fi
