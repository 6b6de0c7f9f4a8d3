"""`python -m train`, recording which chunks each process trains on (for tests/test_multiprocess.py).

    accelerate launch --num_processes 2 --cpu tests/helpers/traced_train.py TRACE_DIR <train args>

Every micro-batch a process builds is written to TRACE_DIR/rank<r>.jsonl as the *unmasked* token rows
(labels where a token was masked, input ids elsewhere), so a test can compare what each process saw
with what a one-process run saw, whatever the masks were.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import train.loop  # noqa: E402
from train.__main__ import run  # noqa: E402
from train.data import as_masked_batch  # noqa: E402


def traced(original, trace: Path):
    def micro_batch(*args, **kwargs):
        batch = original(*args, **kwargs)
        masked = as_masked_batch(batch)  # masked on the host or on the device: numpy either way
        rows = np.where(masked.labels != -100, masked.labels, masked.input_ids)  # [batch, seq] unmasked
        with trace.open("a") as f:
            f.write(json.dumps(rows.tolist()) + "\n")
        return batch

    return micro_batch


def main() -> int:
    trace_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    trace_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    train.loop.micro_batch = traced(train.loop.micro_batch, trace_dir / f"rank{rank}.jsonl")
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
