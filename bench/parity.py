"""Parity: PyTorch (transformers, fp32) against deniro_rt at each precision.

Two sets, as export validation checks them:
  * the premasked IMDB test chunks (chunk_texts + premask with the training seed, as train/
    evaluates): perplexity of both and their relative difference;
  * the sentence workload: top-1 agreement, top-5 identical (same ids in the same order), and the
    largest absolute difference between the log-probabilities deniro_rt returns and PyTorch's for
    the same ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deniro_rt.data import IGNORE_INDEX, MaskedBatch, chunk_texts, perplexity, premask
from export.validate import THRESHOLDS as EXPORT_THRESHOLDS

from .engines import Context, DeniroRt, mask_logprobs

log = logging.getLogger(__name__)

PARITY_METRICS = ("top5_identical", "top1_agreement", "perplexity_rel_diff")
# export validation's thresholds, the one source: {precision: {metric: bound}} (top*: at least, rel diff: at most).
THRESHOLDS = {
    precision: {m: bound for m, (_, bound) in rules.items() if m in PARITY_METRICS}
    for precision, rules in EXPORT_THRESHOLDS.items()
    if precision in ("fp32", "fp16", "int8")
}


@dataclass(frozen=True)
class EvalSettings:
    """How train/ premasks its evaluation set (read from the checkpoint's train_config.json)."""

    chunk_size: int
    eval_seed: int
    mlm_probability: float


def eval_settings(torch_model: Path, max_positions: int, chunk_size: int | None, eval_seed: int | None) -> EvalSettings:
    from train.config import TrainConfig

    saved = torch_model / "train_config.json"
    base = json.loads(saved.read_text()) if saved.is_file() else {}
    default = TrainConfig()
    size = chunk_size or base.get("chunk_size", default.chunk_size)
    return EvalSettings(
        chunk_size=min(size, max_positions),
        eval_seed=eval_seed if eval_seed is not None else base.get("eval_seed", default.eval_seed),
        mlm_probability=base.get("mlm_probability", default.mlm_probability),
    )


def eval_chunks(tokenizer, reviews: list[str], limit: int, settings: EvalSettings, mask_token_id: int) -> MaskedBatch:
    """`limit` test reviews (train/'s seeded subset), chunked and masked once with the eval seed.

    `tokenizer` is a `tokenizers.Tokenizer`; its size (added tokens included) is what train/ draws
    the 10 % random replacements from.
    """
    from train.loop import subset

    texts = subset(reviews, limit, settings.eval_seed)
    chunks = chunk_texts(tokenizer, texts, settings.chunk_size)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    return premask(chunks, settings.eval_seed, mask_token_id, vocab, settings.mlm_probability)


def torch_perplexity(ctx: Context, masked: MaskedBatch, batch_size: int) -> dict:
    """Perplexity as train/ evaluates it: MaskedOnlyMLM's summed cross-entropy over scored tokens."""
    import torch

    from train.model import MaskedOnlyMLM

    wrapped = MaskedOnlyMLM(ctx.model("fp32"))
    total = 0.0
    with torch.inference_mode():
        for start in tqdm(range(0, len(masked.input_ids), batch_size), desc="parity: torch chunks", leave=False):
            ids = torch.from_numpy(masked.input_ids[start : start + batch_size]).to(ctx.device)
            labels = torch.from_numpy(masked.labels[start : start + batch_size]).to(ctx.device)
            total += float(wrapped(input_ids=ids, labels=labels, reduction="sum").double())
    tokens = int((masked.labels != IGNORE_INDEX).sum())
    return {"perplexity": perplexity(total, tokens), "nll": total, "tokens": tokens}


def torch_sentence_logprobs(ctx: Context, texts: list[str], batch_size: int) -> np.ndarray:
    """Full-vocabulary log-probabilities at each text's mask, fp32 PyTorch: [n_texts, vocab]."""
    import torch

    parts = []
    model, tokenizer = ctx.model("fp32"), ctx.tokenizer()
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="parity: torch sentences", leave=False):
            logprobs, _, _ = mask_logprobs(model, tokenizer, texts[start : start + batch_size], ctx.device)
            parts.append(logprobs.cpu().numpy())
    return np.concatenate(parts)


def compare_sentences(reference: np.ndarray, ids: np.ndarray, logprobs: np.ndarray) -> dict:
    """Agreement of deniro_rt's top-k (ids, log-probs [n, k]) with the reference [n, vocab]."""
    k = ids.shape[1]
    ref_top = np.argsort(-reference, axis=1, kind="stable")[:, :k]  # [n, k]
    ref_at_ids = np.take_along_axis(reference, ids, axis=1).astype(np.float64)  # [n, k]
    return {
        "sentences": int(len(ids)),
        "top1_agreement": float((ids[:, 0] == ref_top[:, 0]).mean()),
        f"top{k}_identical": float((ids == ref_top).all(axis=1).mean()),
        "max_abs_logprob_diff": float(np.abs(logprobs - ref_at_ids).max()),
    }


def check(precision: str, result: dict) -> list[str]:
    """The failed thresholds of one precision, as readable lines (empty: it passes)."""
    failures = []
    for metric, bound in THRESHOLDS.get(precision, {}).items():
        if metric == "perplexity_rel_diff":
            value = result["chunks"]["rel_diff"]
            if not value <= bound:
                failures.append(f"{precision}: perplexity differs by {value:.2e} (> {bound:g})")
            continue
        value = result["sentences"].get(metric)
        if value is None:
            failures.append(f"{precision}: {metric} not measured (needs --top-k 5 or more)")
        elif not value >= bound:
            failures.append(f"{precision}: {metric} {value:.4%} (< {bound:.1%})")
    return failures


def run_parity(
    ctx: Context, masked: MaskedBatch, texts: list[str], precisions: list[str], batch_size: int
) -> list[dict]:
    """One result per deniro_rt precision; each holds both sides, the metrics and any failures."""
    reference_ppl = torch_perplexity(ctx, masked, batch_size)
    reference = torch_sentence_logprobs(ctx, texts, batch_size)
    results = []
    for precision in precisions:
        engine = DeniroRt(ctx, precision)
        ours = engine.fm.perplexity(masked, batch_size=batch_size)
        pred = engine.fill_batch(texts, batch_size)
        rel = abs(ours["perplexity"] - reference_ppl["perplexity"]) / reference_ppl["perplexity"]
        result = {
            "precision": precision,
            "provider": engine.provider,
            "chunks": {"torch": reference_ppl, "deniro_rt": ours, "rel_diff": rel},
            "sentences": compare_sentences(reference, pred.ids, pred.logprobs),
            "thresholds": THRESHOLDS.get(precision, {}),
        }
        result["failures"] = check(precision, result)
        result["passed"] = not result["failures"]
        log.info(
            "parity %s: perplexity %.4f vs torch %.4f (rel %.2e), top-1 %.2f%%%s",
            precision,
            ours["perplexity"],
            reference_ppl["perplexity"],
            rel,
            100 * result["sentences"]["top1_agreement"],
            "" if result["passed"] else " FAILED: " + "; ".join(result["failures"]),
        )
        results.append(result)
    return results
