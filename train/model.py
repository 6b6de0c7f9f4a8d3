"""Model construction and the masked-positions-only MLM loss."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from deniro_rt.data import IGNORE_INDEX
from deniro_rt.errors import DeniroError

from .config import COMPILE_MODES, MINILM_SOURCE, SHAPES, TrainConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_model(config: TrainConfig, cache_root: Path | None = None) -> str:
    """The folder or hub id to load: --model itself, or the MiniLM package converted to DistilBERT
    (cached per package version under `cache_root`, a temp folder by default)."""
    if config.init != "pretrained" or config.model != MINILM_SOURCE:
        return config.model
    from .convert import minilm_distilbert

    return str(minilm_distilbert(cache_root or Path(tempfile.gettempdir()) / "deniro-minilm"))


def read_pretrained(flag: str, folder: Path, load: Callable[[], T], fix: str) -> T:
    """`load()` (a from_pretrained of `folder`), with the library's error on one line naming the flag and `fix`:
    a damaged config.json or truncated weights were transformers' or safetensors' traceback."""
    try:
        return load()
    except Exception as exc:  # JSON, safetensors, pickle and transformers' own errors: all are a bad folder here
        first_line = (str(exc).splitlines() or [""])[0][:160]
        raise DeniroError(f"{flag} {folder}: could not load it ({type(exc).__name__}: {first_line}); {fix}") from exc


def build_model(config: TrainConfig, tokenizer, source: str | None = None):
    """Pretrained weights from `source` (default --model), or the preset's DistilBERT shape at random."""
    from transformers import AutoModelForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    if config.init == "random":
        shape = SHAPES[config.preset]
        vocab_size = max(config.vocab_size, len(tokenizer))
        arch = DistilBertConfig(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id, **shape.__dict__)
        torch.manual_seed(config.seed)
        return DistilBertForMaskedLM(arch)
    try:
        return AutoModelForMaskedLM.from_pretrained(source or config.model)
    except Exception as exc:
        where = "folder" if Path(source or config.model).exists() else "hub id"
        raise DeniroError(
            f"could not load a masked-LM checkpoint from {where} {source or config.model!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); pass a "
            f"save_pretrained folder, or --init random to start from scratch"
        ) from exc


def max_positions(model) -> int:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512)


class MaskedOnlyMLM(nn.Module):
    """Wraps a masked LM so the LM head runs only at scored positions (labels != IGNORE_INDEX).

    The head is [hidden -> vocab]; running it on every position costs most of a small model's step.
    Wrapping (rather than calling submodules from the loop) keeps DDP's hooks in the forward path,
    so `accelerate launch` multi-GPU works unchanged.

    head_rows = 0: the head runs on exactly the scored rows; their number is known only on the device, so
    the host waits for the encoder every step. head_rows = F in (0, 1]: in training, the head runs on a fixed
    head_capacity(tokens, F) rows (the scored ones first, then unscored ones that the loss ignores): the same
    loss without that wait, and one shape a step for torch.compile. Scored rows beyond the capacity are left
    out of the loss; the loop counts them (rows_over_capacity).
    """

    def __init__(self, model, head_rows: float = 0.0):
        super().__init__()
        self.model = model
        self.has_fast_head = hasattr(model, "distilbert") and hasattr(model, "vocab_projector")
        self.head_rows = check_head_rows(head_rows)

    def forward(self, input_ids, labels, attention_mask=None, reduction: str = "mean"):
        if not self.has_fast_head:  # any other masked LM: full head, same loss
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction=reduction)
        hidden = self.model.distilbert(input_ids=input_ids, attention_mask=attention_mask)[0]  # [B, T, H]
        if self.head_rows and self.training:
            return self.fixed_rows_loss(hidden, labels, reduction)
        scored = labels != IGNORE_INDEX  # [B, T]
        rows, targets = hidden[scored], labels[scored]  # [n_scored, H], [n_scored]: a shape known on the device
        return F.cross_entropy(self.head(rows).float(), targets, reduction=reduction)

    def fixed_rows_loss(self, hidden: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
        """--head-rows' training loss: the head on head_capacity rows, a shape known on the host (compilable)."""
        rows, targets = fixed_rows(hidden, labels, head_capacity(labels.numel(), self.head_rows))  # [rows, H], [rows]
        return F.cross_entropy(self.head(rows).float(), targets, reduction=reduction)  # ignores IGNORE_INDEX targets

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """DistilBERT's MLM head on selected hidden rows. rows [n, H] -> logits [n, vocab]."""
        m = self.model
        x = m.vocab_layer_norm(m.activation(m.vocab_transform(rows)))
        return m.vocab_projector(x)


def compile_in_place(wrapped: MaskedOnlyMLM, mode: str = "default") -> None:
    """--compile: the encoder (in place: parameter names, so checkpoints, stay as they are), and with --head-rows
    the head and loss on their fixed rows too. Without --head-rows the head stays eager: its number of rows changes
    every step, and each new shape would compile again."""
    check_compile_mode(True, mode)
    wrapped.model.distilbert.compile(mode=mode)
    if wrapped.head_rows:
        wrapped.fixed_rows_loss = torch.compile(wrapped.fixed_rows_loss, mode=mode)


def check_compile_mode(compile: bool, mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise DeniroError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "default" and not compile:
        raise DeniroError(f"--compile-mode {mode} chooses how --compile compiles; add --compile")


def check_head_rows(fraction: float) -> float:
    if not 0 <= fraction <= 1:
        raise DeniroError(
            f"--head-rows must be 0 (the head on exactly the masked tokens) or a fraction of the batch's tokens "
            f"in (0, 1] (e.g. 0.2 for 15 % masking), got {fraction}"
        )
    return fraction


def head_capacity(tokens: int, fraction: float) -> int:
    """Rows the head runs on with --head-rows F: F of the batch's tokens, rounded up to a multiple of 64."""
    return min(tokens, -(-round(tokens * fraction) // 64) * 64)


def fixed_rows(hidden: torch.Tensor, labels: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored rows in position order (as hidden[labels != IGNORE_INDEX]), then unscored ones, `capacity`
    in all: a shape known on the host. hidden [B, T, H], labels [B, T] -> [capacity, H], [capacity]."""
    flat_labels = labels.flatten()  # [B*T]
    unscored = (flat_labels == IGNORE_INDEX).to(torch.uint8)
    order = torch.sort(unscored, stable=True).indices[:capacity]  # [capacity]: scored first, each in order
    return hidden.flatten(0, 1)[order], flat_labels[order]


def rows_over_capacity(labels, fraction: float):
    """Scored tokens of a [B, T] batch that --head-rows F leaves out of the loss (0 with F = 0); a device
    tensor for a torch batch (no wait), an int for a numpy one."""
    if not fraction:
        return 0
    tokens = labels.numel() if torch.is_tensor(labels) else labels.size  # torch [B, T] or numpy [B, T]
    over = (labels != IGNORE_INDEX).sum() - head_capacity(tokens, fraction)
    return over.clamp(min=0) if torch.is_tensor(over) else max(int(over), 0)


# --------------------------------------------------------------------------- optimizer
HEAD_PARAMS = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.bias")


def is_head(name: str) -> bool:
    """DistilBERT's MLM head, except the projector matrix (tied to the word embeddings: encoder)."""
    return any(name.startswith(p) or name.startswith("model." + p) for p in HEAD_PARAMS)


def param_groups(wrapped: nn.Module, config: TrainConfig) -> list[dict]:
    """One group (the recipe), or [encoder, head] when the head has its own lr or warm-up."""
    if config.head_lr is None and config.head_warmup_steps == 0:
        return [{"params": list(wrapped.parameters()), "lr": config.lr}]
    named = list(wrapped.named_parameters())  # tied weights appear once, under the encoder's name
    head = [p for n, p in named if is_head(n)]
    if not head:
        raise DeniroError("--head-lr/--head-warmup-steps need a DistilBERT masked LM (vocab_transform ...)")
    return [
        {"params": [p for n, p in named if not is_head(n)], "lr": config.lr},
        {"params": head, "lr": config.lr if config.head_lr is None else config.head_lr},
    ]


def linear_decay(step: int, warmup: int, total: int, frozen_until: int = 0) -> float:
    """Multiplier of the peak lr: linear warm-up then linear decay to 0 (transformers' linear schedule);
    0 before `frozen_until` (a head-only warm-up keeps the encoder still)."""
    if step < frozen_until:
        return 0.0
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def make_scheduler(optimizer, config: TrainConfig, total_steps: int):
    """LambdaLR with one multiplier per param group (partials: checkpointable, resumable)."""
    from torch.optim.lr_scheduler import LambdaLR

    lambdas = [
        partial(
            linear_decay,
            warmup=config.warmup_steps,
            total=total_steps,
            frozen_until=config.head_warmup_steps if i == 0 and len(optimizer.param_groups) > 1 else 0,
        )
        for i in range(len(optimizer.param_groups))
    ]
    return LambdaLR(optimizer, lambdas)
