"""Mini training steps that fit a time budget, from the probe's step time (bench train's JSON).

    python bench/gpu/steps.py PROBE.json BUDGET_SECONDS MAX_STEPS   -> prints the step count

The real loop also masks each batch on the host and evaluates every 500 steps: budget / (1.5 x the
probe's step time), at most MAX (the preset's 4,500).
"""

import json
import sys


def steps(step_ms: float, budget_s: float, most: int) -> int:
    return max(1, min(most, int(budget_s * 1000 / (1.5 * step_ms))))


if __name__ == "__main__":
    path, budget, most = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    try:
        (row,) = json.load(open(path))["train"]
        print(steps(row["step_ms_mean"], budget, most))
    except (OSError, ValueError, KeyError):  # the probe failed: a count that fits any sane GPU
        print(min(most, 1500))
