"""Model construction and the masked-positions-only MLM loss."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deniro_rt.data import IGNORE_INDEX
from deniro_rt.errors import DeniroError

from .config import SHAPES, TrainConfig

log = logging.getLogger(__name__)


def build_model(config: TrainConfig, tokenizer):
    """Pretrained weights from --model, or the preset's DistilBERT shape initialised at random."""
    from transformers import AutoModelForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    if config.init == "random":
        shape = SHAPES[config.preset]
        vocab_size = max(config.vocab_size, len(tokenizer))
        arch = DistilBertConfig(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id,
                                **shape.__dict__)
        torch.manual_seed(config.seed)
        return DistilBertForMaskedLM(arch)
    try:
        return AutoModelForMaskedLM.from_pretrained(config.model)
    except Exception as exc:
        where = "folder" if Path(config.model).exists() else "hub id"
        raise DeniroError(f"could not load a masked-LM checkpoint from {where} {config.model!r} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); pass a "
                          f"save_pretrained folder, or --init random to start from scratch") from exc


def max_positions(model) -> int:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512)


class MaskedOnlyMLM(nn.Module):
    """Wraps a masked LM so the LM head runs only at scored positions (labels != IGNORE_INDEX).

    The head is [hidden -> vocab]; running it on every position costs most of a small model's step.
    Wrapping (rather than calling submodules from the loop) keeps DDP's hooks in the forward path,
    so `accelerate launch` multi-GPU works unchanged.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.has_fast_head = hasattr(model, "distilbert") and hasattr(model, "vocab_projector")

    def forward(self, input_ids, labels, attention_mask=None, reduction: str = "mean"):
        if not self.has_fast_head:  # any other masked LM: full head, same loss
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction=reduction)
        hidden = self.model.distilbert(input_ids=input_ids, attention_mask=attention_mask)[0]  # [B, T, H]
        scored = labels != IGNORE_INDEX  # [B, T]
        logits = self.head(hidden[scored])  # [n_scored, vocab]
        return F.cross_entropy(logits.float(), labels[scored], reduction=reduction)

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """DistilBERT's MLM head on selected hidden rows. rows [n, H] -> logits [n, vocab]."""
        m = self.model
        x = m.vocab_layer_norm(m.activation(m.vocab_transform(rows)))
        return m.vocab_projector(x)
