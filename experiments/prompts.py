"""Top 5 of the two model-card prompts from ONNX artifacts and from transformers' pipeline on the PyTorch model.

Its JSON went to bench/results/cpu-2core-minilm/prompts.json (the H100 MiniLM: fp32 export, int8 weight-only
export, and the PyTorch checkpoint runs/minilm-gpu). The folders are git-ignored scratch on the machine that made
them. The JSON goes to stdout, a readable summary to stderr (a default --out overwrote the committed report):

    .venv/bin/python experiments/prompts.py > prompts.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deniro_rt  # noqa: E402

PROMPTS = ["This is a great [MASK]!", "I gave it [MASK] out of ten."]
ARTIFACTS = [
    ("deniro_rt fp32 (exports/minilm)", "exports/minilm", "fp32"),
    ("deniro_rt fp32 (exports/minilm-int8-weight-only)", "exports/minilm-int8-weight-only", "fp32"),
    ("deniro_rt int8 weight-only (exports/minilm-int8-weight-only)", "exports/minilm-int8-weight-only", "int8"),
]
TORCH_MODEL = "runs/minilm-gpu"


def slim(result: list[dict]) -> list[dict]:
    return [{"token_str": d["token_str"], "score": round(float(d["score"]), 4)} for d in result]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from transformers import pipeline

    out = {"prompts": PROMPTS, "results": {}}
    for name, folder, precision in ARTIFACTS:
        fm = deniro_rt.FillMask(folder, device="cpu", precision=precision)
        out["results"][name] = {p: slim(r) for p, r in zip(PROMPTS, fm.fill(PROMPTS, top_k=5))}
    pipe = pipeline("fill-mask", model=TORCH_MODEL, device="cpu")
    out["results"][f"transformers pipeline ({TORCH_MODEL}, torch fp32)"] = {p: slim(pipe(p, top_k=5)) for p in PROMPTS}
    for name, res in out["results"].items():
        print(name, file=sys.stderr)
        for prompt, r in res.items():
            print("  ", prompt, " | ".join(f"{d['token_str']} {d['score']:.3f}" for d in r), file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
