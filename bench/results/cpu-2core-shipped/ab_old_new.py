"""Interleaved A/B: the H100 model as shipped before (commit 3964d17) vs the artifact in deniro_rt/models/default,
same process. The README's figures were measured when that was the first CPU slice's model (commit 8b3148c);
run today it compares against whatever ships now.

    mkdir -p /tmp/old-default && git archive 3964d17 deniro_rt/models/default | tar -x -C /tmp/old-default
    PYTHONPATH=. .venv/bin/python bench/results/cpu-2core-shipped/ab_old_new.py
"""
import time, statistics
from deniro_rt import FillMask
from deniro_rt.data import load_text_splits
models = {"old": FillMask("/tmp/old-default/deniro_rt/models/default", device="cpu"),
          "new": FillMask("deniro_rt/models/default", device="cpu")}
reviews = load_text_splits("/work/shared/data/imdb", ["test"])["test"][:400]
sents = [" ".join(r.split()[:12]).replace(r.split()[5], "[MASK]", 1) for r in reviews if len(r.split()) > 12][:320]
res = {k: {"prompt": [], "b32": []} for k in models}
for rnd in range(6):
    for name, fm in (models.items() if rnd % 2 == 0 else reversed(models.items())):
        for _ in range(5): fm.fill(["This is a great [MASK]!"])
        t = time.perf_counter()
        for _ in range(50): fm.fill(["This is a great [MASK]!"])
        res[name]["prompt"].append((time.perf_counter() - t) / 50 * 1e3)
        t = time.perf_counter(); fm.fill(sents, batch_size=32)
        res[name]["b32"].append(len(sents) / (time.perf_counter() - t))
for name in res:
    print(name, "prompt ms median %.2f" % statistics.median(res[name]["prompt"]),
          "| batch-32 sentences/s median %.0f" % statistics.median(res[name]["b32"]))
