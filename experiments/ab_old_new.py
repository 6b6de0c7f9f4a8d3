"""Interleaved A/B: an older shipped artifact vs the one in deniro_rt/models/default, same process.

Does a new model change the speed? Both artifacts run in 6 interleaved rounds (the order flips every round) so
that load changes on a shared machine hit both alike: "This is a great [MASK]!" alone (ms per call) and 320
IMDB test sentences at batch 32 (sentences/s). The figures in bench/results/cpu-2core-shipped/README.md were
measured with the H100 model as shipped at commit 3964d17 against the first CPU slice's model (commit 8b3148c);
run today it compares against whatever ships now.

    mkdir -p /tmp/old-default && git archive 3964d17 deniro_rt/models/default | tar -x -C /tmp/old-default
    .venv/bin/python experiments/ab_old_new.py [--old /tmp/old-default/deniro_rt/models/default] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deniro_rt import FillMask  # noqa: E402
from deniro_rt.data import load_text_splits  # noqa: E402

PROMPT = "This is a great [MASK]!"


def sentences(dataset: str) -> list[str]:
    """320 twelve-word test sentences with their sixth word masked."""
    reviews = load_text_splits(dataset, ["test"])["test"][:400]
    return [" ".join(r.split()[:12]).replace(r.split()[5], "[MASK]", 1) for r in reviews if len(r.split()) > 12][:320]


def one_round(fm: FillMask, sents: list[str], res: dict) -> None:
    for _ in range(5):  # warm-up
        fm.fill([PROMPT])
    started = time.perf_counter()
    for _ in range(50):
        fm.fill([PROMPT])
    res["prompt"].append((time.perf_counter() - started) / 50 * 1e3)
    started = time.perf_counter()
    fm.fill(sents, batch_size=32)
    res["b32"].append(len(sents) / (time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default="/tmp/old-default/deniro_rt/models/default")
    parser.add_argument("--new", default="deniro_rt/models/default")
    parser.add_argument("--dataset", default="../shared/data/imdb")
    args = parser.parse_args()
    models = {"old": FillMask(args.old, device="cpu"), "new": FillMask(args.new, device="cpu")}
    sents = sentences(args.dataset)
    res = {name: {"prompt": [], "b32": []} for name in models}
    for rnd in range(6):
        for name, fm in models.items() if rnd % 2 == 0 else reversed(models.items()):
            one_round(fm, sents, res[name])
    for name in res:
        print(
            name,
            "prompt ms median {:.2f}".format(statistics.median(res[name]["prompt"])),
            "| batch-32 sentences/s median {:.0f}".format(statistics.median(res[name]["b32"])),
        )


if __name__ == "__main__":
    main()
