"""`python -m train` with the real loop's tokens/s recorded (the GPU run's mini training figure).

    python bench/gpu/train_timed.py --json OUT.json -- <python -m train arguments>

Runs train's own main() unchanged; it only wraps train_step / evaluate / save_checkpoint with timers.
Steady-state tokens/s = tokens of the steps between the first and the last train_step call, divided
by the wall time between those calls minus the time spent in evaluation and checkpoints. The time
between two train_step starts is one full step of the real loop (data masking on the host
included); the device queue keeps it honest without a synchronisation per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere: the repo root on the path


@dataclass
class Clock:
    starts: list[float] = field(default_factory=list)  # perf_counter at each train_step call
    pauses: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds) of evaluate / checkpoints

    def timed(self, fn, pause: bool):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            if not pause:
                self.starts.append(start)
            try:
                return fn(*args, **kwargs)
            finally:
                if pause:
                    self.pauses.append((start, time.perf_counter() - start))

        return wrapper

    def paused(self) -> float:
        """Seconds of evaluation and checkpoints between the first and the last step."""
        return sum(d for s, d in self.pauses if self.starts and self.starts[0] < s < self.starts[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where the timing summary is written")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then python -m train's arguments")
    args = parser.parse_args(argv)
    from deniro_rt.cli import setup_logging
    from train import loop
    from train.__main__ import parse_args

    setup_logging()
    config = parse_args([a for a in args.train_args if a != "--"])
    clock = Clock()
    loop.train_step = clock.timed(loop.train_step, pause=False)
    for name in ("evaluate", "save_checkpoint"):
        setattr(loop, name, clock.timed(getattr(loop, name), pause=True))
    started = time.perf_counter()
    history = loop.main(config)
    summary = summarise(clock, config, time.perf_counter() - started, history)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "history")}))
    return 0


def test_score(config) -> dict | None:
    """The test split's one score, written by train after the last step (None for a run that stopped early)."""
    metrics = Path(config.output) / "metrics.json"
    return json.loads(metrics.read_text()).get("test") if metrics.is_file() else None


def summarise(clock: Clock, config, wall: float, history: list) -> dict:
    """final_perplexity: the last VALIDATION perplexity (what a sweep chooses on); test_perplexity: reported."""
    steps = len(clock.starts)
    test = test_score(config)
    tokens_per_step = config.batch_size * config.chunk_size * config.grad_accum
    span = (clock.starts[-1] - clock.starts[0] - clock.paused()) if steps > 1 else float("nan")
    return {
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": (steps - 1) * tokens_per_step / span if steps > 1 else None,
        "step_ms": 1e3 * span / (steps - 1) if steps > 1 else None,
        "eval_and_checkpoint_s": clock.paused(),
        "wall_s": wall,
        "precision": config.precision,
        "final_perplexity": history[-1]["perplexity"] if history else None,
        "selection_split": "validation",
        "test_perplexity": test["perplexity"] if test else None,
        "test": test,
        "loop_tokens_per_s": history[-1].get("tokens_per_s") if history else None,
        "history": history,
        "config": asdict(config),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
