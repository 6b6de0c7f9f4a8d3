import json
import deniro_rt
from transformers import pipeline
prompts = ["This is a great [MASK]!", "I gave it [MASK] out of ten."]
out = {"prompts": prompts, "results": {}}
def slim(r):
    return [{"token_str": d["token_str"], "score": round(float(d["score"]), 4)} for d in r]
for name, folder, prec in [("deniro_rt fp32 (exports/minilm)", "exports/minilm", "fp32"),
                           ("deniro_rt fp32 (exports/minilm-int8-weight-only)", "exports/minilm-int8-weight-only", "fp32"),
                           ("deniro_rt int8 weight-only (exports/minilm-int8-weight-only)", "exports/minilm-int8-weight-only", "int8")]:
    fm = deniro_rt.FillMask(folder, device="cpu", precision=prec)
    out["results"][name] = {p: slim(r) for p, r in zip(prompts, fm.fill(prompts, top_k=5))}
pipe = pipeline("fill-mask", model="runs/minilm-gpu", device="cpu")
out["results"]["transformers pipeline (runs/minilm-gpu, torch fp32)"] = {p: slim(pipe(p, top_k=5)) for p in prompts}
json.dump(out, open("bench/results/cpu-2core-minilm/prompts.json", "w"), indent=2)
for name, res in out["results"].items():
    print(name)
    for p, r in res.items():
        print("  ", p, " | ".join(f"{d['token_str']} {d['score']:.3f}" for d in r))
