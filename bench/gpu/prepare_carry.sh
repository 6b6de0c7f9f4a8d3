#!/usr/bin/env bash
# Prepare, on this machine, what the GPU run carries, lay it out call by call and check every call's budget.
#   bash bench/gpu/prepare_carry.sh            # .carry/text (IMDB train+test, xz, 17.7 MB), .carry/minilm (fp16,
#                                              # 45.5 MB) cut into .carry/minilm-parts (2 parts + tokenizer)
#   START=runs/shipped-full bash bench/gpu/prepare_carry.sh   # start from a trained model (python -m export.unprune), not MiniLM
#   bash bench/gpu/prepare_carry.sh --ortgpu   # also .ortgpu/part1+2: onnxruntime-gpu + the extra wheels (~3 min, PyPI),
#                                              # and .carry/serve/wheels (deniro_rt serve's stack, 3.8 MB, call 1)
#   (always) .carry/extra/text/unsupervised.jsonl.xz: the 50,000 unsupervised reviews, the sweep's extra MLM
#   text (issue 23), carried by a call of its own (call 3b of `calls.py plan issue23`), not by calls 1-3
#   python bench/gpu/calls.py stage && python bench/gpu/calls.py check   # again after the repo changed size
# Both folders are git-ignored (.gitignore). The device calls are in bench/gpu/README.md (`bench/gpu/calls.py plan
# issue23` / `plan issue21` print them): calls 1-3 carry .carry/call1..3, hard links to the payloads laid out as /tmp on the device.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$(cd "${IMDB:-../shared/data/imdb}" && pwd)
TOOLS=${ORT_TOOLS:-../shared/tools/ort-gpu}
PY=${PYTHON:-.venv/bin/python}
# The GPU image has transformers 5.x / huggingface_hub 1.x / tokenizers 0.23 and no Optimum; the
# project's pinned set (export's Optimum layout, bench's optimum-ort engine) rides in part1 as wheels.
WHEELS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0)
# Nor has it FastAPI, pydantic or uvicorn, which `python -m deniro_rt serve` (the arrays stage's load test) imports:
# the serve extra's pins plus what they import that the image lacks (it has anyio, click, h11, annotated-doc,
# prometheus-client, uvloop), 3.8 MB, in call 1 beside the ort half: /tmp/ortgpu/wheels, where install.sh looks.
SERVE_WHEELS=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 opentelemetry-api==1.45.2 uvicorn==0.54.0 httptools==0.9.0)

(cd "$SRC" && grep -E ' (train|test|unsupervised)\.parquet$' SHA256SUMS | sha256sum -c --quiet -)  # the source is intact
# Only what this script makes: .carry/ may hold other things (the weights back from a run, .carry/trained).
rm -rf .carry/text .carry/extra .carry/minilm .carry/minilm-parts .carry/call[0-9] && mkdir -p .carry
# Text as xz'd JSON lines (parquet's zstd gives 21 MB); ~1.5 min, both splits at once.
"$PY" bench/gpu/carry.py pack-text "$SRC" .carry/text
# The unsupervised reviews (the sweep's --extra-splits), laid out as /tmp holds them: carry/text/ on the device
"$PY" bench/gpu/carry.py pack-text "$SRC" .carry/extra/carry/text --splits unsupervised
# MiniLM (PyPI package) as DistilBERT, fp16; START=runs/minilm-e5 starts from a trained model instead
# (then run the sweep with PRESET=deniro: the head is trained, bench/gpu/README.md)
"$PY" bench/gpu/carry.py init .carry/minilm ${START:+--from "$START"}
# 45.5 MB no longer fits one call beside the repo: 2 parts, joined on the GPU box by run.sh / sweep.sh
"$PY" bench/gpu/carry.py split-init .carry/minilm .carry/minilm-parts

if [ "${1:-}" = "--ortgpu" ]; then
  bash "$TOOLS/prepare.sh" "${WHEELS[@]}"
  rm -rf .carry/serve && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .carry/serve/wheels "${SERVE_WHEELS[@]}"
fi
[ -d .ortgpu ] || echo "note: .ortgpu/ not prepared (run with --ortgpu, ~3 min): calls 1, 2 and 4 lack it"
[ -d .carry/serve ] || echo "note: .carry/serve/ not prepared (run with --ortgpu): call 1 lacks the serve wheels"
"$PY" bench/gpu/calls.py stage || true  # what is missing shows in the check below
# Each call's total with a 1 MB margin, and the joins (ort halves, start point parts) done here first.
"$PY" bench/gpu/calls.py check
# The shared tool's own check (no margin), one path a call: each call carries one folder (.carry/extra included).
bash "$TOOLS/budget.sh" $("$PY" bench/gpu/calls.py paths)
