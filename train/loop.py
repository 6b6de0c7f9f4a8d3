"""`python -m train`: whole-word-masked LM domain adaptation of DistilBERT on IMDB with Accelerate.

Deterministic and resumable: the data order and the masks of each step derive from (seed, epoch,
step), dropout is reseeded per step, and checkpoints hold model, optimizer and scheduler, so a run
that stops and resumes ends on the same weights as one that never stopped.

The protocol (issue 23): every evaluation during training scores the validation reviews carved from
--train-splits; the test split is masked once up front, sealed, and scored once after the last step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from deniro_rt.data import (
    Chunks,
    MaskedBatch,
    chunk_texts,
    load_text_splits,
    looks_like_path,
    perplexity,
    premask,
    whole_word_mask,
)
from deniro_rt.errors import DeniroError
from deniro_rt.files import check_output_folder, publish, resume_record

from .config import (
    BASE_MODEL_ID,
    CHECKPOINTS,
    INVOCATION_ONLY,
    MINILM_SOURCE,
    TrainConfig,
    check_numbers,
    latest_checkpoint,
)
from .data import (
    VALIDATION,
    DeviceChunks,
    carve_validation,
    check_splits,
    device_epoch_order,
    epoch_order,
    mask_rows,
    split_list,
    step_generator,
    to_device,
)
from .model import (
    MaskedOnlyMLM,
    build_model,
    check_compile_mode,
    check_head_rows,
    compile_in_place,
    make_scheduler,
    max_positions,
    param_groups,
    resolve_model,
    rows_over_capacity,
)
from .tokenizer import load_tokenizer, train_wordpiece

log = logging.getLogger("train")
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Heldout:
    """A premasked held-out set and the split it came from."""

    name: str  # VALIDATION, or the test split's name
    batch: MaskedBatch
    texts: int  # reviews in it


class SealedTest:
    """The test split, premasked once; open() hands it out once, and only after the last optimizer step."""

    def __init__(self, heldout: Heldout):
        self._heldout, self._opened = heldout, False

    def open(self, step: int, total_steps: int) -> Heldout:
        if step < total_steps:
            raise DeniroError(
                f"the test split is scored once, after training (step {step} of {total_steps}); "
                f"choices read the {VALIDATION} split"
            )
        if self._opened:
            raise DeniroError("the test split was already scored for this run; it is scored once")
        self._opened = True
        return self._heldout


@dataclass
class Prepared:
    tokenizer: object
    model: object
    train: Chunks
    val: Heldout | None  # None with --val-fraction 0: no choice can be made during the run
    test: SealedTest


# --------------------------------------------------------------------------- setup
def check_output(config: TrainConfig) -> Path:
    sources = {"--model": config.model, "--tokenizer": config.tokenizer, "--dataset": config.dataset}
    out = check_output_folder(config.output, sources if config.overwrite and not config.resume else {})
    busy = out.exists() and any(out.iterdir())
    if busy and not (config.resume or config.overwrite):
        raise DeniroError(
            f"--output {out} is not empty; pass --resume to continue it, --overwrite to replace it, or another --output"
        )
    if config.resume:
        check_same_run(config, out)
    if config.resume and not latest_checkpoint(out):
        raise DeniroError(
            f"--resume: no checkpoint in {out / CHECKPOINTS}; run without --resume (with --overwrite if the run "
            "stopped before its first checkpoint)"
        )
    if config.precision not in PRECISIONS:
        raise DeniroError(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    return out


# What may differ between a run and its --resume; anything else would silently train another run
# (a forgotten --max-steps "finished" a stopped run early; another --preset died in a size mismatch).
RESUME_MAY_CHANGE = ("output", *INVOCATION_ONLY)


RESTORE_OPTIONS = (
    "put back the file the run wrote (the options it was started with), or start over with --overwrite instead of "
    "--resume"
)


def check_same_run(config: TrainConfig, out: Path) -> None:
    saved_file = out / "train_config.json"
    if not saved_file.is_file() and not latest_checkpoint(out):
        return  # no run to compare with: the missing checkpoint is reported next
    if not saved_file.is_file():  # written before the first checkpoint: deleted since (it resumed unchecked)
        raise DeniroError(
            f"--resume: {saved_file} is missing, so the options given now cannot be checked against the run's; "
            + RESTORE_OPTIONS
        )
    saved, now = saved_options(saved_file), asdict(config)
    changed = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved[k]} (now {now[k]})" for k in changed)
        raise DeniroError(f"--resume: {out} was started with {diffs}; resume with the options it was started with")


def saved_options(saved_file: Path) -> dict:
    """The options a run was started with (deniro_rt.files.resume_record: a damaged file is one error line)."""
    return resume_record(saved_file, RESTORE_OPTIONS)


def subset(texts: list[str], limit: int | None, seed: int) -> list[str]:
    """A seeded random subset (the parquet rows are sorted by label, so a prefix would be one-sided)."""
    if limit is None or limit >= len(texts):
        return texts
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    return [texts[i] for i in keep]


def get_tokenizer(config: TrainConfig, out: Path, texts: dict[str, list[str]], source: str):
    if config.resume:
        return load_tokenizer(str(out))
    if config.tokenizer or config.init == "pretrained":
        return load_tokenizer(config.tokenizer or source)
    splits = [s for s in config.tokenizer_splits.split(",") if s]
    corpus = [t for s in splits for t in texts[s]]
    return train_wordpiece(corpus, config.vocab_size)


def check_sources(config: TrainConfig) -> None:
    model = config.model if config.init == "pretrained" and config.model != MINILM_SOURCE else None
    for flag, source in (("--model", model), ("--tokenizer", config.tokenizer)):
        if source and looks_like_path(source) and not Path(source).expanduser().exists():
            raise DeniroError(
                f"{flag} {source}: no such checkpoint folder; pass a save_pretrained "
                f"folder or a hub id (e.g. {BASE_MODEL_ID})"
            )
        if source and Path(source).expanduser().is_file():  # was taken for a hub id: a minute of retries offline
            raise DeniroError(f"{flag} {source} is a file; pass its save_pretrained folder or a hub id")


def split_texts(config: TrainConfig, texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """train (minus the validation reviews, plus --extra-splits), validation, test: lists of reviews.

    IMDB repeats reviews word for word (within train, and across train, test and unsupervised), so a held-out
    review can have a copy that trains: --extra-splits text leaves out the validation and test reviews, and the
    validation keeps only reviews whose text never trains. The --train-splits reviews stay as the recipe has them
    (IMDB's own train/test repeats, counted in the log, train as they did in the original run)."""
    labelled = [t for s in split_list(config.train_splits) for t in texts[s]]
    train, val = carve_validation(labelled, config.val_fraction, config.val_seed)
    test = texts[config.eval_split]
    extra = [t for s in split_list(config.extra_splits) for t in texts[s]]
    held_out = set(val) | set(test)
    kept_extra = [t for t in extra if t not in held_out]
    in_train = set(train)
    kept_val = [t for t in val if t not in in_train]
    log.info(
        "repeated reviews: %d --extra-splits reviews that are validation or test reviews left out of training, "
        "%d validation reviews left out (a copy trains), %d test reviews also in --train-splits (trained on, as in "
        "the recipe)",
        len(extra) - len(kept_extra),
        len(val) - len(kept_val),
        sum(t in in_train for t in test),
    )
    return {
        "train": subset(train + kept_extra, config.max_train_texts, config.seed),
        VALIDATION: subset(kept_val, config.max_val_texts, config.val_seed),
        "test": subset(test, config.max_eval_texts, config.eval_seed),
    }


def heldout(name: str, texts: list[str], seed: int, tokenizer, config: TrainConfig) -> Heldout:
    chunks = chunk_texts(tokenizer.backend_tokenizer, texts, config.chunk_size)
    if len(chunks) == 0:
        raise DeniroError(
            f"the {name} split has no chunk of {config.chunk_size} tokens ({len(texts)} reviews); use more texts"
        )
    batch = premask(chunks, seed, tokenizer.mask_token_id, len(tokenizer), config.mlm_probability)
    return Heldout(name, batch, len(texts))


def check_model_fits(config: TrainConfig, model, tokenizer) -> None:
    """The chunks fit the model's positions and the tokenizer's ids its embedding rows (a --tokenizer of a larger
    vocabulary was an IndexError from inside torch's embedding, at the first evaluation)."""
    limit = max_positions(model)
    if config.chunk_size > limit:
        raise DeniroError(
            f"--chunk-size {config.chunk_size} is larger than the model's maximum of "
            f"{limit} positions; pass --chunk-size {limit} or less"
        )
    if len(tokenizer) > model.config.vocab_size:
        raise DeniroError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} embeddings; "
            "pass the --tokenizer the model was trained with"
        )


def prepare(config: TrainConfig, out: Path) -> Prepared:
    """Everything that can fail on bad input happens here, before anything is written."""
    check_splits(config)
    check_sources(config)
    source = resolve_model(config)  # the MiniLM preset: converted here, before any data is read
    tok_splits = split_list(config.tokenizer_splits) if config.init == "random" else []
    splits = split_list(config.train_splits) + split_list(config.extra_splits) + [config.eval_split] + tok_splits
    texts = load_text_splits(config.dataset, list(dict.fromkeys(splits)), config.text_column)
    tokenizer = get_tokenizer(config, out, texts, source)
    model = build_model(config, tokenizer, source)
    check_model_fits(config, model, tokenizer)
    parts = split_texts(config, texts)
    train = chunk_texts(tokenizer.backend_tokenizer, parts["train"], config.chunk_size)
    if len(train) == 0:
        raise DeniroError(f"not enough text for one chunk of {config.chunk_size} tokens; use more texts")
    val = heldout(VALIDATION, parts[VALIDATION], config.val_seed, tokenizer, config) if parts[VALIDATION] else None
    test = heldout(config.eval_split, parts["test"], config.eval_seed, tokenizer, config)
    log.info(
        "data: %d train chunks (%d reviews), %d %s reviews, %d %s reviews (scored once, at the end); %d tokens a chunk",
        len(train),
        len(parts["train"]),
        len(parts[VALIDATION]),
        VALIDATION,
        test.texts,
        test.name,
        config.chunk_size,
    )
    return Prepared(tokenizer, model, train, val, SealedTest(test))


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(accelerator, out: Path, step: int, history: list, keep: int, tally: Tally) -> None:
    """Write to a temp folder, then rename: a crash never leaves a half-written checkpoint. The train loss summed
    since the last evaluation goes with it (a resumed run's next row then averages the same steps)."""
    accelerator.wait_for_everyone()
    left_out = torch.as_tensor(tally.left_out, device=accelerator.device).reshape(())
    since_eval = {
        "loss": float(accelerator.reduce(tally.loss.detach().clone(), reduction="mean")),
        "steps": tally.steps,
        "left_out": int(accelerator.reduce(left_out, reduction="sum")),  # all processes'
    }
    final = out / CHECKPOINTS / f"step_{step:08d}"
    tmp = out / CHECKPOINTS / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "history": history, "since_eval": since_eval, "processes": accelerator.num_processes}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        publish(tmp, final)  # replaces a checkpoint of the same step in one swap
        for old in sorted((out / CHECKPOINTS).glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, out: Path) -> tuple[int, list, dict | None]:
    """The newest checkpoint that loads (a damaged one, say a file lost to a full disk, is skipped with a
    warning: the one before it is complete, and resuming from it gives the same result, later)."""
    found = sorted((out / CHECKPOINTS).glob("step_*"), reverse=True)
    for ckpt in found:
        try:
            accelerator.load_state(str(ckpt))  # every part is loaded again from the next one if this fails
            state = json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            log.warning("checkpoint %s does not load (%s: %s); trying the one before", ckpt, type(exc).__name__, exc)
            continue
        check_same_processes(state, ckpt, accelerator.num_processes)
        log.info("resumed from %s (step %d)", ckpt, state["step"])
        return state["step"], state["history"], state.get("since_eval")
    raise DeniroError(
        f"--resume: none of the checkpoints in {out / CHECKPOINTS} loads (the log names each problem); "
        "delete the damaged ones, or start over with --overwrite"
    )


def check_same_processes(state: dict, ckpt: Path, n_procs: int) -> None:
    """The global batch, the steps of an epoch and so the lr schedule's length depend on the process count: a
    resume with another count would silently train another run (the lr jumps, chunks are skipped or repeated)."""
    saved = state.get("processes", n_procs)  # checkpoints written before the count was saved: not checked
    if saved != n_procs:
        raise DeniroError(
            f"--resume: {ckpt} was saved by a run of {saved} processes, this one has {n_procs}; the global batch, "
            f"the steps of an epoch and the learning-rate schedule depend on it: resume with {saved} processes"
        )


def best_row(history: list[dict]) -> dict | None:
    """The evaluation the run would choose: lowest VALIDATION perplexity (the test split is not in history)."""
    scored = [row for row in history if row.get("split") == VALIDATION and row["perplexity"] is not None]
    return min(scored, key=lambda row: row["perplexity"]) if scored else None


def save_final(
    accelerator, wrapped, prepared: Prepared, config: TrainConfig, out: Path, history: list, test: dict
) -> None:
    """save_pretrained folder (safetensors + tokenizer), written to a temp dir and moved in file by file."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    tmp = out / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(wrapped).model.save_pretrained(tmp, safe_serialization=True)
    prepared.tokenizer.save_pretrained(tmp)
    config.save(tmp / "train_config.json")
    metrics = {"config": config.record(), "epochs": history, "best_validation": best_row(history), "test": test}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()


# --------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Schedule:
    micro_batch: int  # chunks per process per micro-step
    steps_per_epoch: int  # optimizer steps
    total_steps: int


def make_schedule(config: TrainConfig, n_chunks: int, n_procs: int) -> Schedule:
    per_step = config.batch_size * n_procs * config.grad_accum
    steps_per_epoch = n_chunks // per_step
    if steps_per_epoch == 0:
        raise DeniroError(
            f"{n_chunks} training chunks are fewer than one step of {per_step}; "
            f"lower --batch-size/--grad-accum or use more texts"
        )
    total = config.max_steps or steps_per_epoch * config.epochs
    return Schedule(config.batch_size, steps_per_epoch, total)


def micro_batch(
    config: TrainConfig,
    train: Chunks | DeviceChunks,
    sched: Schedule,
    step: int,
    micro: int,
    rank: int,
    n_procs: int,
    tokenizer,
):
    """The (deterministic) chunks and masks of one micro-step of one process: a MaskedBatch masked on the
    host (numpy), or a TorchBatch masked where `train` lives (DeviceChunks, --masking device)."""
    epoch, in_epoch = divmod(step, sched.steps_per_epoch)
    global_micro = in_epoch * config.grad_accum + micro
    start = (global_micro * n_procs + rank) * sched.micro_batch
    if isinstance(train, DeviceChunks):
        device = train.input_ids.device
        order_there = device_epoch_order(config.seed, epoch, len(train), device)  # [n_chunks], copied once an epoch
        gen = step_generator(device, config.seed, epoch, global_micro, rank)
        return mask_rows(
            train,
            order_there[start : start + sched.micro_batch],
            gen,
            tokenizer.mask_token_id,
            len(tokenizer),
            config.mlm_probability,
        )
    rows = epoch_order(config.seed, epoch, len(train))[start : start + sched.micro_batch]
    rng = np.random.default_rng([config.seed, epoch, global_micro, rank])
    return whole_word_mask(
        train.input_ids[rows],
        train.word_ids[rows],
        rng,
        tokenizer.mask_token_id,
        len(tokenizer),
        config.mlm_probability,
    )


@torch.no_grad()
def evaluate(accelerator, wrapped, heldout: Heldout, batch_size: int) -> float:
    """Perplexity on a premasked held-out set: exp(sum CE / masked tokens), over all processes."""
    eval_set = heldout.batch
    wrapped.eval()
    rank, n_procs = accelerator.process_index, accelerator.num_processes
    from tqdm.auto import tqdm

    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # [nll, tokens]
    starts = range(rank * batch_size, len(eval_set.input_ids), batch_size * n_procs)
    for start in tqdm(starts, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        ids = torch.from_numpy(eval_set.input_ids[start : start + batch_size]).to(accelerator.device)
        labels = torch.from_numpy(eval_set.labels[start : start + batch_size]).to(accelerator.device)
        with accelerator.autocast():
            nll = wrapped(input_ids=ids, labels=labels, reduction="sum")
        total += torch.stack([nll.double(), (labels != -100).sum().double()])
    total = accelerator.reduce(total, reduction="sum")
    wrapped.train()
    return perplexity(float(total[0]), int(total[1]))


def train_step(accelerator, wrapped, optimizer, batches: list[MaskedBatch]) -> torch.Tensor:
    """One optimizer step over `grad_accum` micro-batches; returns the mean loss (on device)."""
    total = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(batches):  # MaskedBatch (numpy, host masking) or TorchBatch (already there)
        ids = torch.as_tensor(batch.input_ids).to(accelerator.device, non_blocking=True)  # [batch, seq]
        labels = torch.as_tensor(batch.labels).to(accelerator.device, non_blocking=True)  # [batch, seq]
        last = i == len(batches) - 1
        with accelerator.no_sync(wrapped) if not last else nullcontext():
            with accelerator.autocast():
                loss = wrapped(input_ids=ids, labels=labels) / len(batches)
            accelerator.backward(loss)
        total += loss.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def format_table(history: list[dict], test: dict) -> str:
    lines = [f"| epoch | step | train loss | {VALIDATION} perplexity | tokens/s |", "|---|---|---|---|---|"]
    for row in history:
        loss = "—" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        ppl = "—" if row["perplexity"] is None else f"{row['perplexity']:.2f}"
        rate = f"{row['tokens_per_s']:,.0f}" if row.get("tokens_per_s") else "—"
        lines.append(f"| {row['epoch']} | {row['step']} | {loss} | {ppl} | {rate} |")
    lines.append(
        f"\n{test['split']} perplexity (once, after training; {test['texts']} reviews, mask seed "
        f"{test['seed']}): {test['perplexity']:.2f}"
    )
    return "\n".join(lines)


@dataclass
class Run:
    """What the step loop works with, built once by start_run()."""

    accelerator: object
    wrapped: MaskedOnlyMLM  # prepared by Accelerate (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    scheduler: object  # LambdaLR counting optimizer steps
    prepared: Prepared
    config: TrainConfig
    sched: Schedule
    out: Path
    train_data: Chunks | DeviceChunks  # DeviceChunks: masked where the model runs (--masking device/auto on CUDA)


@dataclass
class Tally:
    """Running sums between two evaluations, and the time spent in optimizer steps this process (tokens/s).

    The process's first step is timed apart (first_step_s) and left out of tokens/s: it holds torch.compile's
    compilation, kernel autotuning and the allocator's growth, which would make a short or compiled run look slow.
    """

    loss: torch.Tensor
    steps: int = 0
    left_out: torch.Tensor | int = 0  # scored tokens beyond --head-rows' capacity (rows_over_capacity)
    timed_steps: int = 0  # steps of this process after its first
    step_s: float = 0.0  # seconds in those steps (data, masking, forward, backward, update)
    first_step_s: float | None = None

    @classmethod
    def resumed(cls, since_eval: dict, device, main_process: bool) -> Tally:
        """The sums a checkpoint carried ({} on a fresh start); the left-out count, a sum over processes, is
        held by the main process alone (evaluation sums it over them again)."""
        loss = torch.tensor(since_eval.get("loss", 0.0), device=device)
        return cls(loss, since_eval.get("steps", 0), since_eval.get("left_out", 0) if main_process else 0)

    def add_step_time(self, seconds: float) -> None:
        if self.first_step_s is None:
            self.first_step_s = seconds
        else:
            self.timed_steps, self.step_s = self.timed_steps + 1, self.step_s + seconds

    def tokens_per_s(self, config: TrainConfig, n_procs: int) -> float | None:
        tokens = self.timed_steps * config.batch_size * config.chunk_size * config.grad_accum * n_procs
        return tokens / self.step_s if self.step_s > 0 else None


def make_optimizer(config: TrainConfig, wrapped, device) -> torch.optim.Optimizer:
    """AdamW; fused (one kernel for all parameters) on CUDA with --adamw auto, foreach elsewhere."""
    if config.adamw not in ("auto", "fused", "foreach"):
        raise DeniroError(f"--adamw must be auto, fused or foreach, got {config.adamw!r}")
    fused = config.adamw == "fused" or (config.adamw == "auto" and torch.device(device).type == "cuda")
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(param_groups(wrapped, config), lr=config.lr, weight_decay=config.weight_decay, **kind)


def masks_on_device(config: TrainConfig, device) -> bool:
    if config.masking not in ("auto", "device", "host"):
        raise DeniroError(f"--masking must be auto, device or host, got {config.masking!r}")
    return config.masking == "device" or (config.masking == "auto" and torch.device(device).type == "cuda")


def start_run(config: TrainConfig) -> Run:
    from accelerate import Accelerator

    out = check_output(config)
    check_numbers(config)
    # A bad --masking, --head-rows or --compile-mode fails here, before any work.
    masks_on_device(config, "cpu")
    check_head_rows(config.head_rows)
    check_compile_mode(config.compile, config.compile_mode)
    # Launched as several processes on a machine without CUDA (torchrun / accelerate launch --multi_gpu):
    # cpu=True makes Accelerate join them with gloo; left alone, each would train alone on the full data.
    accelerator = Accelerator(
        mixed_precision=PRECISIONS[config.precision],
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
    )
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)  # one process reports progress; the others only their problems
    log.info("config: %s", json.dumps(asdict(config)))
    prepared = prepare(config, out)
    wrapped = MaskedOnlyMLM(prepared.model, config.head_rows)
    if config.compile:
        compile_in_place(wrapped, config.compile_mode)
    optimizer = make_optimizer(config, wrapped, accelerator.device)
    sched = make_schedule(config, len(prepared.train), accelerator.num_processes)
    if accelerator.is_main_process:  # only now, when every check passed, is an old run replaced
        if config.overwrite and not config.resume:
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "train_config.json")
        prepared.tokenizer.save_pretrained(out)  # --resume reloads exactly this vocabulary
    # Not passed to prepare(): Accelerate would step it once per process; it counts optimizer steps.
    scheduler = make_scheduler(optimizer, config, sched.total_steps)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    on_device = masks_on_device(config, accelerator.device)
    train_data = to_device(prepared.train, accelerator.device) if on_device else prepared.train
    return Run(accelerator, wrapped, optimizer, scheduler, prepared, config, sched, out, train_data)


def validate(run: Run) -> float | None:
    """The score every choice reads: validation perplexity (None without validation reviews)."""
    val = run.prepared.val
    if val is None:
        return None
    if val.name != VALIDATION:  # a held-out set of another split can never steer the run
        raise DeniroError(f"choices read the {VALIDATION} split only, not {val.name!r}")
    return evaluate(run.accelerator, run.wrapped, val, run.config.batch_size)


def score_test(run: Run, step: int) -> dict:
    """The test split, once, after the last step (SealedTest refuses earlier or twice)."""
    test = run.prepared.test.open(step, run.sched.total_steps)
    ppl = evaluate(run.accelerator, run.wrapped, test, run.config.batch_size)
    log.info(">>> %s perplexity (once, after training): %.2f", test.name, ppl)
    return {"split": test.name, "texts": test.texts, "seed": run.config.eval_seed, "perplexity": ppl}


def main(config: TrainConfig) -> list[dict]:
    """Train; returns the evaluation history (one row per validation evaluation)."""
    run = start_run(config)
    step, history, since_eval = load_checkpoint(run.accelerator, run.out) if config.resume else (0, [], None)
    if step == 0:
        history.append(
            {
                "epoch": 0,
                "step": 0,
                "train_loss": None,
                "split": VALIDATION,
                "perplexity": validate(run),
                "tokens_per_s": None,
            }
        )
        log.info(">>> step 0: %s perplexity %s", VALIDATION, history[0]["perplexity"])
    total = run.sched.total_steps
    stop_at = min(total, step + config.stop_after_steps) if config.stop_after_steps else total
    step, history = run_steps(run, step, stop_at, history, since_eval)
    if step >= total:
        test = score_test(run, step)
        save_final(run.accelerator, run.wrapped, run.prepared, config, run.out, history, test)
        log.info("final model saved to %s\n%s", run.out, format_table(history, test))
    else:
        log.info("stopped at step %d of %d; continue with --resume", step, total)
    return history


def one_step(run: Run, step: int, tally: Tally) -> torch.Tensor:
    acc, config = run.accelerator, run.config
    torch.manual_seed(config.seed * 1_000_003 + step)  # dropout depends on the step alone: resumable
    batches = [
        micro_batch(
            config, run.train_data, run.sched, step, m, acc.process_index, acc.num_processes, run.prepared.tokenizer
        )
        for m in range(config.grad_accum)
    ]
    loss = train_step(acc, run.wrapped, run.optimizer, batches)
    for batch in batches:  # no wait: a device tensor with device masking, an int with host masking
        tally.left_out = tally.left_out + rows_over_capacity(batch.labels, config.head_rows)
    run.scheduler.step()
    tally.loss, tally.steps = tally.loss + loss, tally.steps + 1
    return loss


def run_steps(run: Run, step: int, stop_at: int, history: list, since_eval: dict | None) -> tuple[int, list]:
    """Optimizer steps from `step` to `stop_at`, evaluating and checkpointing on the way. since_eval: the
    checkpoint's train-loss sum and steps since its last evaluation (None: a fresh start)."""
    from tqdm.auto import tqdm

    acc, config, sched = run.accelerator, run.config, run.sched
    bar = tqdm(
        total=sched.total_steps, initial=step, disable=not acc.is_local_main_process, desc="train", dynamic_ncols=True
    )
    tally = Tally.resumed(since_eval or {}, acc.device, acc.is_main_process)
    run.wrapped.train()
    while step < stop_at:
        started = time.perf_counter()
        loss = one_step(run, step, tally)
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == stop_at:  # loss.item() waits for the device: the steps' time includes it
            show_progress(run, bar, tally, loss)
        tally.add_step_time(time.perf_counter() - started)
        epoch_end = step % sched.steps_per_epoch == 0
        if epoch_end or step == sched.total_steps or (config.eval_every and step % config.eval_every == 0):
            history.append(evaluation_row(run, step, tally))
            tally.loss, tally.steps, tally.left_out = torch.zeros((), device=acc.device), 0, 0
        if epoch_end or step == stop_at or (config.save_every and step % config.save_every == 0):
            save_checkpoint(acc, run.out, step, history, config.keep_checkpoints, tally)
    bar.close()
    return step, history


def show_progress(run: Run, bar, tally: Tally, loss: torch.Tensor) -> None:
    rate = tally.tokens_per_s(run.config, run.accelerator.num_processes) or 0.0
    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}", tok_s=f"{rate:,.0f}")
    if not bar.disable and not bar.fp.isatty():  # a log file gets a line now and then (no bar redraws)
        log.info("step %d: loss %.3f, lr %.2e, %.0f tokens/s", bar.n, loss.item(), run.scheduler.get_last_lr()[0], rate)


def evaluation_row(run: Run, step: int, tally: Tally) -> dict:
    ppl = validate(run)
    mean_loss = float(run.accelerator.reduce(tally.loss, reduction="mean")) / max(tally.steps, 1)
    epoch = step / run.sched.steps_per_epoch
    rate = tally.tokens_per_s(run.config, run.accelerator.num_processes)
    left_out = left_out_tokens(run, tally, step)
    log.info(
        ">>> step %d (epoch %.2f): %s perplexity %s, %s tokens/s",
        step,
        epoch,
        VALIDATION,
        "—" if ppl is None else f"{ppl:.2f}",
        "—" if rate is None else f"{rate:,.0f}",
    )
    return {
        "epoch": round(epoch, 3),
        "step": step,
        "train_loss": mean_loss,
        "split": VALIDATION,
        "perplexity": ppl,
        "tokens_per_s": rate,  # the process's first step left out (Tally)
        "first_step_s": tally.first_step_s,
        "head_rows_left_out": left_out,  # masked tokens out of the loss since the last row (--head-rows)
    }


def left_out_tokens(run: Run, tally: Tally, step: int) -> int:
    """Masked tokens that --head-rows' capacity left out of the loss since the last evaluation, all processes
    (read here, where the evaluation waits for the device anyway); a warning names the fix."""
    left_out = torch.as_tensor(tally.left_out, device=run.accelerator.device).reshape(())
    total = int(run.accelerator.reduce(left_out, reduction="sum"))
    if total:
        log.warning(
            "step %d: %d masked tokens did not fit --head-rows %s of a batch and were left out of the loss; "
            "raise --head-rows (or 0: exactly the masked tokens)",
            step,
            total,
            run.config.head_rows,
        )
    return total
