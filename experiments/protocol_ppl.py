"""Perplexity of ONNX artifacts on the DeNiro protocol (issue 12): IMDB test reviews (train/'s seeded subset
when --reviews is set), each artifact's own tokenizer, 256-token chunks, whole-word masking 15 % once with
seed 1234 -- what `python -m train` reports per epoch -- scored by deniro_rt (no PyTorch).

    .venv/bin/python experiments/protocol_ppl.py --reviews 2500 \
        deniro_rt/models/default exports/minilm-20k exports/minilm > protocol_ppl.json

Every bench/results/cpu-2core-minilm/shipped/protocol_ppl*.json was written this way (whole split: no --reviews;
about 18 min a model on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.parity import EvalSettings, eval_chunks  # noqa: E402
from deniro_rt import FillMask  # noqa: E402
from deniro_rt.data import load_text_splits  # noqa: E402


def score(artifact: str, reviews: list[str], limit: int | None, settings: EvalSettings) -> dict:
    fm = FillMask(artifact, device="cpu", precision="fp32")
    masked = eval_chunks(fm.tokenizer, reviews, limit, settings, fm.mask_id)
    started = time.perf_counter()
    result = fm.perplexity(masked, batch_size=32)
    seconds = time.perf_counter() - started
    return {
        "artifact": artifact,
        "vocab_size": fm.manifest.vocab_size,
        "chunks": len(masked.input_ids),
        **result,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--dataset", default="../shared/data/imdb")
    parser.add_argument("--reviews", type=int, default=None, help="test reviews (default: all 25,000)")
    args = parser.parse_args()
    reviews = load_text_splits(args.dataset, ["test"])["test"]
    settings = EvalSettings(chunk_size=256, eval_seed=1234, mlm_probability=0.15)
    rows = []
    for artifact in args.artifacts:
        rows.append(score(artifact, reviews, args.reviews, settings))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"reviews": args.reviews or len(reviews), "settings": settings.__dict__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
