"""Perplexity of ONNX artifacts on the DeNiro protocol (issue 12): IMDB test reviews (train/'s seeded subset
when --reviews is set), each artifact's own tokenizer, 256-token chunks, whole-word masking 15 % once with
seed 1234 -- what `python -m train` reports per epoch -- scored by deniro_rt (no PyTorch).

    PYTHONPATH=. .venv/bin/python bench/results/cpu-2core-minilm/shipped/protocol_ppl.py --reviews 2500 \
        deniro_rt/models/default exports/minilm-20k exports/minilm > .../protocol_ppl.json
"""
import argparse
import json
import time

from bench.parity import EvalSettings, eval_chunks
from deniro_rt import FillMask
from deniro_rt.data import load_text_splits

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("artifacts", nargs="+")
parser.add_argument("--dataset", default="../shared/data/imdb")
parser.add_argument("--reviews", type=int, default=None, help="test reviews (default: all 25,000)")
args = parser.parse_args()
reviews = load_text_splits(args.dataset, ["test"])["test"]
settings = EvalSettings(chunk_size=256, eval_seed=1234, mlm_probability=0.15)
rows = []
for artifact in args.artifacts:
    fm = FillMask(artifact, device="cpu", precision="fp32")
    masked = eval_chunks(fm.tokenizer, reviews, args.reviews, settings, fm.mask_id)
    started = time.perf_counter()
    result = fm.perplexity(masked, batch_size=32)
    seconds = time.perf_counter() - started
    rows.append({"artifact": artifact, "vocab_size": fm.manifest.vocab_size, "chunks": len(masked.input_ids),
                 **result, "seconds": round(seconds, 1)})
    print(json.dumps(rows[-1]), flush=True)
print(json.dumps({"reviews": args.reviews or len(reviews), "settings": settings.__dict__, "rows": rows}, indent=2))
