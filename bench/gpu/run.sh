#!/usr/bin/env bash
# The GPU measurement run (issue 6): export + parity + latency/throughput on CUDA + training speed.
# Runs on the lent H100/H200 box after onnxruntime-gpu is installed (see bench/gpu/README.md), from
# the repo root, with .carry/ holding: imdb/test.parquet, mini/ (python -m train output of the
# shipped model) and base-tokenizer/ (any 30522-piece fast tokenizer folder). Budget: ~6 minutes.
# Writes everything to $OUT (at most 8 files come back): log.txt, env.txt, {mini,base}/bench.{json,md,png}.
set -euo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
OUT=${OUT:-/tmp/deniro-gpu-out}
WORK=${WORK:-/tmp/deniro-gpu-work}
DATA=.carry/imdb
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo; echo "=== $(date +%T) $*"; }

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import onnxruntime as o, torch, transformers as t; print('ort', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('transformers', t.__version__)"
} | tee "$OUT/env.txt"
python3 -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), 'no CUDA EP'"

step "base shape, random init (the speed model)"
python3 -m train --init random --tokenizer .carry/base-tokenizer --dataset "$DATA" --train-splits test \
  --max-steps 1 --max-train-texts 200 --max-eval-texts 20 --output "$WORK/base" --overwrite

step "export: mini (validated) and base (speed only: a random model's flat outputs fail top-k checks)"
python3 -m export --onnx --model .carry/mini --output "$WORK/mini-onnx" --device cuda --precision fp32,fp16 \
  --dataset "$DATA" --overwrite
python3 -m export --onnx --model "$WORK/base" --output "$WORK/base-onnx" --device cuda --precision fp32,fp16 \
  --no-validate --overwrite

step "bench all on CUDA: mini (parity is the fp16 goal)"
python3 -m bench all --model "$WORK/mini-onnx" --torch-model .carry/mini --device cuda --dataset "$DATA" \
  --out "$OUT/mini" --lengths 16,64,128,256 --batch-sizes 1,64,512 --latency-samples 200 \
  --throughput-sentences 10000 --throughput-seconds 20 --train-shapes mini --train-precision bf16 || echo "mini bench exit $?"

step "bench all on CUDA: base shape (latency/throughput goals, bf16 training tokens/s)"
python3 -m bench all --model "$WORK/base-onnx" --torch-model "$WORK/base" --device cuda --dataset "$DATA" \
  --out "$OUT/base" --lengths 16,64,128,256 --batch-sizes 1,64,512 --latency-samples 200 \
  --throughput-sentences 10000 --throughput-seconds 20 --train-shapes deniro --train-precision bf16 \
  --train-batch-size 32 --train-chunk-size 256 --train-steps 30 || echo "base bench exit $?"
step "done"
