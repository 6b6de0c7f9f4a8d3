"""Training speed: tokens/s and step time of train/'s own loop pieces, random init, synthetic tokens.

Per shape (train/config.py SHAPES, with that preset's batch and chunk size unless overridden):
build_model (random init) -> MaskedOnlyMLM -> AdamW -> Accelerate -> micro_batch (whole-word
masking) -> train_step, timed after a few warm-up steps. The token ids are random (the content
of a chunk does not change the work); words are runs of 1-3 tokens, so masking behaves as on text.
Steps are timed from micro_batch to the loss on the host, as the real loop pays them (masking included),
waiting for the device every 10 steps as the real loop does.

The loop before and after issue 23, interleaved in one process (ratio measured in the same run):

    python -m bench.train_bench --shapes tiny,minilm --batch-size 8 --chunk-size 128 --rounds 3 \
        --json bench/results/cpu-2core-train/loop.json
    python -m bench.train_bench --shapes minilm,deniro --precision bf16 --loops device,head-rows,compiled-head-rows \
        --rounds 1 --steps 30 --warmup 5 --json loop.json     # issue 23's loop goals on a GPU (run.sh STAGES=loop)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deniro_rt.data import NO_WORD, Chunks
from deniro_rt.errors import DeniroError

INTERRUPTED = "interrupted: --json holds the rows finished so far (rewritten after each); without it none are kept"

log = logging.getLogger(__name__)
FIRST_ID = 5  # ids below are the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], train/tokenizer.py)


@dataclass(frozen=True)
class SyntheticVocab:
    """What build_model and micro_batch read from a tokenizer."""

    size: int
    pad_token_id: int = 0
    mask_token_id: int = 4

    def __len__(self) -> int:
        return self.size


def synthetic_chunks(n_chunks: int, chunk_size: int, vocab: int, seed: int = 0) -> Chunks:
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_ID, vocab, size=(n_chunks, chunk_size)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    starts = rng.random((n_chunks, chunk_size)) < 0.75  # ~1.3 tokens per word, as WordPiece on IMDB
    words = np.cumsum(starts.ravel()).reshape(n_chunks, chunk_size).astype(np.int64)
    words[:, 0] = words[:, -1] = NO_WORD
    return Chunks(input_ids=ids, word_ids=words)


@dataclass(frozen=True)
class LoopOptions:
    """How the loop masks and updates: train/'s defaults now, or the loop before issue 23 (BEFORE)."""

    masking: str = "auto"  # as train's --masking: auto (torch on CUDA, numpy elsewhere) | device | host
    adamw: str = "auto"  # train.loop.make_optimizer's choice; "plain": torch.optim.AdamW() as before
    compile: bool = False
    head_rows: float = 0.0  # train's --head-rows: 0, the head on exactly the masked rows (a device wait a step)
    compile_mode: str = "default"  # train's --compile-mode

    @property
    def name(self) -> str:
        rows = f"/head-rows-{self.head_rows:g}" if self.head_rows else ""
        mode = "" if self.compile_mode == "default" else f"-{self.compile_mode}"
        return f"{self.masking}-mask/{self.adamw}-adamw{rows}" + (f"/compiled{mode}" if self.compile else "")


BEFORE = LoopOptions(masking="host", adamw="plain")
# --loops names: the loop before issue 23, train's defaults with masking forced to one side, device masking with
# the head on a fixed number of rows (--head-rows 0.2: no wait for the count of masked tokens), train's
# defaults with --compile (masking auto: on the device on CUDA, the host elsewhere; the encoder compiled), and
# both (--compile --head-rows 0.2: the encoder, the head and the loss compiled, every shape fixed), and both
# with CUDA graphs (--compile-mode reduce-overhead: each compiled part's kernels replayed as one launch).
LOOPS = {
    "before": BEFORE,
    "host": LoopOptions(masking="host"),
    "device": LoopOptions(masking="device"),
    "head-rows": LoopOptions(masking="device", head_rows=0.2),
    "compiled": LoopOptions(compile=True),
    "compiled-head-rows": LoopOptions(masking="device", compile=True, head_rows=0.2),
    "graphs": LoopOptions(masking="device", compile=True, head_rows=0.2, compile_mode="reduce-overhead"),
}


def pick_loops(names: str, compile: bool) -> list[LoopOptions]:
    """--loops (comma-separated LOOPS names), plus `compiled` with --compile."""
    chosen = [n for n in names.split(",") if n]
    chosen += ["compiled"] if compile and "compiled" not in chosen else []
    unknown = [n for n in chosen if n not in LOOPS]
    if unknown or not chosen:
        what = f"unknown loop {', '.join(unknown)}" if unknown else "no loop given"
        raise DeniroError(f"--loops: {what}; choose from {', '.join(LOOPS)}")
    return [LOOPS[n] for n in chosen]


def train_config(shape: str, batch_size: int | None, chunk_size: int | None, precision: str):
    from train.config import PRESETS, SHAPES, build_config

    if shape not in SHAPES:
        raise DeniroError(f"--train-shapes: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    overrides = {"init": "random", "precision": precision, "seed": 0, "grad_accum": 1}
    if batch_size:
        overrides["batch_size"] = batch_size
    if chunk_size:
        overrides["chunk_size"] = chunk_size
    return build_config(shape if shape in PRESETS else "deniro", overrides)


def build_optimizer(config, wrapped, loop: LoopOptions, device):
    import torch

    from train.loop import make_optimizer

    if loop.adamw == "plain":  # the loop before issue 23: torch's default implementation for the device
        return torch.optim.AdamW(wrapped.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return make_optimizer(config, wrapped, device)


@dataclass
class TrainRun:
    """One shape's model, optimizer and data, prepared as train/'s loop has them (bench_shape's state)."""

    config: object
    vocab: SyntheticVocab
    accelerator: object
    model: object
    wrapped: object
    optimizer: object
    data: object
    sched: object


def prepare_run(config, precision: str, device: str, loop: LoopOptions, total_steps: int) -> TrainRun:
    from train.data import to_device
    from train.loop import make_schedule, masks_on_device
    from train.model import MaskedOnlyMLM, build_model, compile_in_place

    vocab = SyntheticVocab(config.vocab_size)
    accelerator = make_accelerator(precision, device)
    model = build_model(config, vocab)
    wrapped = MaskedOnlyMLM(model, loop.head_rows)
    if loop.compile:
        compile_in_place(wrapped, loop.compile_mode)
    optimizer = build_optimizer(config, wrapped, loop, accelerator.device)
    n_procs = accelerator.num_processes
    chunks = synthetic_chunks(total_steps * config.batch_size * n_procs, config.chunk_size, vocab.size)
    data = to_device(chunks, accelerator.device) if masks_on_device(loop, accelerator.device) else chunks
    sched = make_schedule(config, len(chunks), n_procs)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    wrapped.train()
    return TrainRun(config, vocab, accelerator, model, wrapped, optimizer, data, sched)


SYNC_EVERY = 10  # train/'s loop reads the loss, and so waits for the device, every 10 steps (show_progress)


def time_steps(run: TrainRun, steps: int, warmup: int, desc: str) -> tuple[list[float], float]:
    """Seconds of every step after the warm-up, and the last loss. The device is waited for every SYNC_EVERY
    steps, as in train/'s loop, so a loop whose host runs ahead of the device shows it; each step of a window
    gets the window's mean."""
    from train.loop import micro_batch, train_step

    acc, n_procs = run.accelerator, run.accelerator.num_processes
    times, window, loss = [], 0, 0.0
    for step in tqdm(range(warmup + steps), desc=desc, leave=False, dynamic_ncols=True):
        if step == warmup:
            start = time.perf_counter()
        batch = micro_batch(run.config, run.data, run.sched, step, 0, acc.process_index, n_procs, run.vocab)
        loss_on_device = train_step(acc, run.wrapped, run.optimizer, [batch])
        if step < warmup:
            loss = float(loss_on_device)
            continue
        window += 1
        if window == SYNC_EVERY or step == warmup + steps - 1:
            loss = float(loss_on_device)  # waits for the device
            times += [(time.perf_counter() - start) / window] * window
            start, window = time.perf_counter(), 0
    return times, loss


def bench_shape(
    shape: str,
    steps: int,
    warmup: int,
    batch_size: int | None,
    chunk_size: int | None,
    precision: str,
    device: str,
    loop: LoopOptions = LoopOptions(),
) -> dict:
    config = train_config(shape, batch_size, chunk_size, precision)
    run = prepare_run(config, precision, device, loop, steps + warmup)
    times, loss = time_steps(run, steps, warmup, f"train {shape} {loop.name}")
    n_procs = run.accelerator.num_processes
    tokens = config.batch_size * config.chunk_size * n_procs
    return {
        "shape": shape,
        "precision": precision,
        "device": str(run.accelerator.device),
        **asdict(loop),
        "processes": n_procs,
        "batch_size": config.batch_size,
        "chunk_size": config.chunk_size,
        "vocab_size": run.vocab.size,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "steps": steps,
        "warmup": warmup,
        "step_ms_mean": 1e3 * float(np.mean(times)),
        "step_ms_p50": 1e3 * float(np.median(times)),
        "tokens_per_s": tokens * len(times) / float(np.sum(times)),
        "last_loss": loss,
    }


def make_accelerator(precision: str, device: str):
    """Accelerate as train/ uses it; on a CUDA machine, --device cpu keeps training on the CPU."""
    import torch
    from accelerate import Accelerator

    from train.loop import PRECISIONS

    if precision not in PRECISIONS:
        raise DeniroError(f"--train-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    force_cpu = device == "cpu" and torch.cuda.is_available()
    return Accelerator(mixed_precision=PRECISIONS[precision], cpu=force_cpu)


def run_train(
    shapes: list[str],
    steps: int,
    warmup: int,
    batch_size: int | None,
    chunk_size: int | None,
    precision: str,
    device: str,
) -> list[dict]:
    rows = []
    for shape in shapes:
        row = bench_shape(shape, steps, warmup, batch_size, chunk_size, precision, device)
        log.info(
            "train %s: %.0f tokens/s, %.0f ms/step (batch %d x %d)",
            shape,
            row["tokens_per_s"],
            row["step_ms_mean"],
            row["batch_size"],
            row["chunk_size"],
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- before/after, interleaved
def compare_loops(
    shapes: list[str],
    rounds: int,
    steps: int,
    warmup: int,
    batch_size: int | None,
    chunk_size: int | None,
    precision: str,
    loops: list[LoopOptions],
    save=None,
) -> dict:
    """Each shape x loop `rounds` times, interleaved (before, after, before, ...): the ratio of the medians
    is measured under the same load (the CPU is shared). A loop that fails (torch.compile without a working
    compiler, say) is a row with its error; the other loops' rows stand. `save(result)` after every row: a
    run cut by its time limit (a GPU lease) keeps the rows it finished."""
    rows = []
    result = {"rows": rows, "summary": {}}
    for _ in range(rounds):
        for shape in shapes:
            for loop in loops:
                try:
                    row = bench_shape(shape, steps, warmup, batch_size, chunk_size, precision, "auto", loop)
                    log.info("%s %s: %.0f tokens/s", shape, loop.name, row["tokens_per_s"])
                except Exception as exc:  # noqa: BLE001 -- recorded in the report, the bench goes on
                    row = {"shape": shape, **asdict(loop), "error": f"{type(exc).__name__}: {exc}"[:500]}
                    log.warning("%s %s failed: %s", shape, loop.name, row["error"])
                rows.append({"loop": loop.name, **row})
                result = {"rows": rows, "summary": {shape: summarise(rows, shape, loops) for shape in shapes}}
                if save:
                    save(result)
    return result


def summarise(rows: list[dict], shape: str, loops: list[LoopOptions]) -> dict:
    """Median tokens/s per loop (None where every round failed) and the ratio to the first loop."""
    medians = {}
    for loop in loops:
        rates = [r["tokens_per_s"] for r in rows if r["shape"] == shape and r["loop"] == loop.name and "error" not in r]
        medians[loop.name] = float(np.median(rates)) if rates else None
    first = medians[loops[0].name]
    ratios = {n: v / first if v and first else None for n, v in medians.items()}
    return {"median_tokens_per_s": medians, "ratio_to_first": ratios}


def time_masking(batch_size: int, chunk_size: int, vocab: int, rounds: int, reps: int = 20) -> dict:
    """micro_batch alone (the data order + whole-word masking of one step), host numpy vs torch on this
    device, interleaved: the part of the step the issue-23 loop takes off the host's critical path."""
    import torch

    from train.config import TrainConfig
    from train.data import to_device
    from train.loop import make_schedule, micro_batch

    config = TrainConfig(batch_size=batch_size, chunk_size=chunk_size, seed=0)
    chunks = synthetic_chunks(batch_size * reps, chunk_size, vocab)
    sched = make_schedule(config, len(chunks), 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = {"host": chunks, "device": to_device(chunks, device)}
    times = {"host": [], "device": []}
    for _ in range(rounds):
        for name, train in data.items():
            start = time.perf_counter()
            for step in range(reps):
                batch = micro_batch(config, train, sched, step, 0, 0, 1, SyntheticVocab(vocab))
                torch.as_tensor(batch.input_ids).to(device)  # the host batch still has to get there
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(1e3 * (time.perf_counter() - start) / reps)
    return {
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "device": device,
        "ms_per_step_median": {k: float(np.median(v)) for k, v in times.items()},
        "ms_per_step": times,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="tiny,minilm", help="train/config.py SHAPES, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every variant")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, help="chunks per step (default: the shape's preset)")
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk (default: the shape's preset)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--loops",
        default="before,host,device",
        help="loops to time, comma-separated: before (host masking, plain AdamW: the loop before issue 23), "
        "host / device (train's defaults, masking on that side), head-rows (device + --head-rows 0.2), "
        "compiled (train's defaults + --compile), compiled-head-rows (head-rows + --compile), graphs "
        "(compiled-head-rows + --compile-mode reduce-overhead: CUDA graphs)",
    )
    parser.add_argument("--compile", action="store_true", help="also time the loop with torch.compile (= compiled)")
    parser.add_argument("--json", type=Path, help="write rows and summary here")
    parser.add_argument("--masking-only", action="store_true", help="time micro_batch alone (host vs device)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Bad shapes and numbers fail before any loop runs (a --steps 0 row died in a ZeroDivisionError)."""
    from deniro_rt.cli import check_least
    from deniro_rt.files import check_output_file
    from train.config import SHAPES

    unknown = [s for s in args.shapes.split(",") if s and s not in SHAPES]
    if unknown or not args.shapes.strip(","):
        what = f"unknown shape {', '.join(unknown)}" if unknown else "no shape given"
        raise DeniroError(f"--shapes: {what}; choose from {', '.join(SHAPES)}")
    check_least(args, dict(rounds=1, steps=1, warmup=0, batch_size=1, chunk_size=2))
    if args.json:  # written after the first row: an error then lost the row
        check_output_file(args.json, {}, flag="--json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    if args.masking_only:
        result = time_masking(args.batch_size or 32, args.chunk_size or 256, 30522, args.rounds)
        print(json.dumps(result["ms_per_step_median"]))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    loops = pick_loops(args.loops, args.compile)
    save = (lambda result: write_json(result, args)) if args.json else None
    result = compare_loops(
        [s for s in args.shapes.split(",") if s],
        args.rounds,
        args.steps,
        args.warmup,
        args.batch_size,
        args.chunk_size,
        args.precision,
        loops,
        save,
    )
    print(json.dumps(result["summary"], indent=2))
    return 0


def write_json(result: dict, args: argparse.Namespace) -> None:
    """--json, with the command line: rewritten after every row (atomically: a kill mid-write leaves the last)."""
    from deniro_rt.files import write_text_atomically

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "args": {k: str(v) for k, v in vars(args).items()}}
    write_text_atomically(args.json, json.dumps(result, indent=2) + "\n")


def run(argv: list[str] | None = None) -> int:
    from deniro_rt.cli import run_main

    # Ctrl-C (torch imports for seconds, a comparison runs for minutes) was a KeyboardInterrupt traceback
    return run_main(lambda: main(argv), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(run())
