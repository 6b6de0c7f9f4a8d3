"""Measure the shipping levers of a DistilBERT masked LM (issue 12): an int8 word-embedding table (the
tied projector reads the same int8 rows) and pruning the vocabulary pieces IMDB uses least.

Quality is compared with the fp32 model itself on one premasked IMDB test set: perplexity and top-1
agreement at the masked positions. A pruned piece becomes [UNK] in the input, and a masked label that was
pruned is scored as [UNK] (the shipped model could only ever say [UNK] there). Measurement only: nothing
is exported or shipped.

    python -m train.shrink --model runs/minilm --dataset ../shared/data/imdb --keep 30522,20000,16000
    python -m train.shrink --model runs/minilm --dataset ../shared/data/imdb --mixed 4000,8000,16000  # + mixed rows
    python -m train.shrink --model $TMPDIR/deniro-minilm/minilm-l6-v2-0.1.2-distilbert \\
        --checkpoint runs/minilm/checkpoints/step_00000100 --dataset ../shared/data/imdb   # a running run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deniro_rt.data import chunk_texts, load_text_splits, premask, untruncated
from deniro_rt.errors import DeniroError
from deniro_rt.files import write_text_atomically

if TYPE_CHECKING:  # torch is imported where it runs: under run_main, so Ctrl-C while it loads is one line
    import torch

log = logging.getLogger("train.shrink")


@dataclass
class ShrinkConfig:
    model: str  # DistilBertForMaskedLM save_pretrained folder (config, tokenizer, weights)
    dataset: str  # folder of <split>.parquet files
    keep: str = "30522,20000,16000"  # vocabulary sizes to try (most frequent IMDB pieces + specials)
    count_texts: int = 5000  # train reviews the piece frequencies are counted on
    eval_texts: int = 100  # test reviews in the premasked evaluation set
    chunk_size: int = 128
    eval_seed: int = 1234
    output: str | None = None  # optional JSON file for the results
    mixed: str = ""  # whole-vocabulary variants: this many most frequent rows at 8 bits, the rest at 4 (issue 23)
    checkpoint: str | None = None  # a train checkpoint folder (step_*) whose weights replace --model's


HELP = {
    "model": "DistilBertForMaskedLM save_pretrained folder (config, tokenizer, weights)",
    "dataset": "folder of <split>.parquet files (train: piece counts; test: evaluation)",
    "keep": "comma-separated vocabulary sizes to try (most frequent IMDB pieces, specials always kept)",
    "count_texts": "train reviews the piece frequencies are counted on",
    "eval_texts": "test reviews in the premasked evaluation set",
    "chunk_size": "tokens per evaluation chunk",
    "eval_seed": "seed of the review sample and of the one-time masking",
    "output": "JSON file for the results (not inside --model, --checkpoint or --dataset)",
    "checkpoint": "a python -m train checkpoint folder (step_*) whose weights replace --model's",
    "mixed": "comma-separated counts N: the whole vocabulary, the N most frequent rows 8-bit and the rest 4-bit, "
    "per-row scales (measured after the --keep rows)",
}


@dataclass(frozen=True)
class Variant:
    keep: int  # vocabulary size after pruning
    int8_embedding: bool
    int8_rows: int | None = None  # mixed table: the most frequent rows 8-bit, the others 4-bit (per-row scales)


def piece_order(tokenizer, texts: list[str]) -> np.ndarray:
    """Piece ids, most frequent in `texts` first; special tokens always first."""
    backend = untruncated(tokenizer.backend_tokenizer)  # count whole reviews
    size = len(tokenizer)  # ~5 ms a call on a 30k vocabulary: once, not per review
    counts = np.zeros(size, dtype=np.int64)
    for encoding in backend.encode_batch(texts):
        counts += np.bincount(encoding.ids, minlength=size)
    counts[tokenizer.all_special_ids] = np.iinfo(np.int64).max
    return np.argsort(-counts, kind="stable")


def quantize_rows(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric per-row int8 (or int4: levels -7..7), dequantized: what the table with fp32 row scales gives back."""
    import torch

    top = 2 ** (bits - 1) - 1  # 127 for 8 bits, 7 for 4
    scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / top  # [vocab, 1]
    return torch.round(weight / scale).clamp(-top, top) * scale


def mixed_rows(weight: torch.Tensor, order: np.ndarray, int8_rows: int) -> torch.Tensor:
    """The `int8_rows` most frequent pieces' rows at 8 bits, every other row at 4 bits."""
    import torch

    out = quantize_rows(weight, 4)
    frequent = torch.from_numpy(np.ascontiguousarray(order[:int8_rows]))
    out[frequent] = quantize_rows(weight[frequent], 8)
    return out


def variant_table(weight: torch.Tensor, variant: Variant, order: np.ndarray) -> torch.Tensor:
    if variant.int8_rows is not None:
        return mixed_rows(weight, order, variant.int8_rows)
    return quantize_rows(weight) if variant.int8_embedding else weight


def score(model, eval_set, variant: Variant, order: np.ndarray, unk_id: int) -> tuple[float, np.ndarray, float]:
    """Perplexity, the top-1 predictions (original ids) at the masked positions, and the fraction of
    masked labels that were pruned (scored as [UNK])."""
    import torch

    with torch.no_grad():  # a decorator would import torch with the module, before run_main
        kept = torch.from_numpy(np.sort(order[: variant.keep]))  # [keep]
        is_kept = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        is_kept[kept] = True
        weight = variant_table(model.distilbert.embeddings.word_embeddings.weight, variant, order)
        position = {int(t): i for i, t in enumerate(kept)}
        nll, count, top1, pruned = 0.0, 0, [], 0
        for start in range(0, len(eval_set.input_ids), 16):
            ids = torch.from_numpy(eval_set.input_ids[start : start + 16])  # [batch, seq]
            labels = torch.from_numpy(eval_set.labels[start : start + 16])  # [batch, seq]
            ids = torch.where(is_kept[ids], ids, unk_id)  # pruned pieces (also 80/10/10's random ones) -> [UNK]
            embeds = torch.nn.functional.embedding(ids, weight)  # [batch, seq, dim]
            hidden = model.distilbert(inputs_embeds=embeds)[0][labels != -100]  # [n, dim]
            x = model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))
            logits = x @ weight[kept].T + model.vocab_projector.bias[kept]  # [n, keep]
            target = labels[labels != -100]
            pruned += int((~is_kept[target]).sum())
            target = torch.where(is_kept[target], target, unk_id)
            target = torch.tensor([position[int(t)] for t in target])
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
            top1.append(kept[logits.argmax(-1)].numpy())
        return float(np.exp(nll / count)), np.concatenate(top1), pruned / count


def package_bytes(model, keep: int, int8_embedding: bool, int8_rows: int | None = None) -> int:
    """Estimated graph size with int8 linear layers: embedding table at 1 or 4 bytes (mixed: 1 byte for the
    int8 rows, half a byte for the others) + fp32 row scales, linear weights 1 byte, everything else fp32."""
    dim, total = model.config.dim, 0
    for name, param in model.named_parameters():
        if "word_embeddings" in name or name == "vocab_projector.bias":
            continue  # both scale with the kept vocabulary: counted below
        linear = param.ndim == 2 and "position" not in name
        total += param.numel() * (1 if linear else 4)
    if int8_rows is not None:
        n8 = min(int8_rows, keep)
        return total + n8 * dim + (keep - n8) * dim // 2 + keep * 4 + keep * 4
    return total + keep * dim * (1 if int8_embedding else 4) + (keep * 4 if int8_embedding else 0) + keep * 4


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """Weights of a `python -m train` checkpoint (Accelerate state: MaskedOnlyMLM keys 'model.*')."""
    from safetensors.torch import load_file

    state = {k.removeprefix("model."): v for k, v in load_file(checkpoint / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"vocab_projector.weight"}:  # the projector is tied: stored once
        raise DeniroError(
            f"{checkpoint} does not match --model's architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()


def variants(config: ShrinkConfig, vocab: int, specials: int) -> list[Variant]:
    """Per --keep: fp32 then int8 rows (the first is the reference); then the whole vocabulary per --mixed."""
    keep = sizes(config.keep, "--keep", 1)
    if min(keep) < specials:  # [UNK] itself would be pruned: a KeyError when a pruned label was scored as it
        raise DeniroError(
            f"--keep {min(keep)} is fewer than the model's {specials} special tokens, which every vocabulary "
            f"keeps; pass sizes of at least {specials}"
        )
    kept = [Variant(min(k, vocab), int8) for k in keep for int8 in (False, True)]
    return kept + [Variant(vocab, False, min(n, vocab)) for n in sizes(config.mixed, "--mixed", 0)]


def sizes(value: str | None, flag: str, least: int) -> list[int]:
    """The comma-separated whole numbers of `flag`, each at least `least` (--keep needs one: the reference)."""
    parts = [part.strip() for part in (value or "").split(",") if part.strip()]
    numbers = [int(part) for part in parts if part.isdigit()]
    if len(numbers) < len(parts) or min(numbers, default=least) < least or (flag == "--keep" and not numbers):
        raise DeniroError(
            f"{flag} must be comma-separated whole numbers of at least {least} (e.g. 30522,20000), got {value!r}"
        )
    return numbers


def check_config(config: ShrinkConfig) -> None:
    """Every flag, before the model loads: bad ones were tracebacks (int('abc'), a missing folder taken for a
    hub id, ZeroDivisionError) or, for --output, an error after the whole measurement that lost its rows."""
    from deniro_rt.cli import check_least
    from deniro_rt.files import check_output_file

    check_least(config, dict(count_texts=1, eval_texts=1, chunk_size=2))
    sizes(config.keep, "--keep", 1)
    sizes(config.mixed, "--mixed", 0)
    check_folder("--model", config.model, "config.json")
    if config.checkpoint:
        check_folder("--checkpoint", config.checkpoint, "model.safetensors")
    if config.output:  # not inside a folder it reads (--output model/config.json replaced the model's config)
        sources = {"--model": config.model, "--checkpoint": config.checkpoint, "--dataset": config.dataset}
        check_output_file(config.output, sources)


def check_folder(flag: str, folder: str, needed: str) -> None:
    path = Path(folder).expanduser()
    if not path.is_dir():
        kind = "is a file" if path.exists() else "does not exist"
        raise DeniroError(f"{flag} {folder} {kind}; pass a folder holding {needed}")
    if not (path / needed).is_file():
        raise DeniroError(f"{flag} {folder} has no {needed}; pass a folder holding {needed}")


def load_model(config: ShrinkConfig):
    """--model (and --checkpoint's weights), evaluation mode, and its tokenizer."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from .model import read_pretrained  # a damaged or foreign folder: the library's own error, on one line

    folder, fix = Path(config.model), "pass a save_pretrained folder of a masked LM and its tokenizer"
    model = read_pretrained("--model", folder, lambda: AutoModelForMaskedLM.from_pretrained(folder).eval(), fix)
    tokenizer = read_pretrained("--model", folder, lambda: AutoTokenizer.from_pretrained(folder), fix)
    if config.checkpoint:
        load_checkpoint_weights(model, Path(config.checkpoint))
    return model, tokenizer


def evaluation_set(config: ShrinkConfig, tokenizer, eval_texts: list[str], max_positions: int):
    """The premasked evaluation set; refused when the model cannot read its chunks (a size mismatch deep in
    DistilBERT) or it scores nothing (a ZeroDivisionError in score)."""
    if config.chunk_size > max_positions:
        raise DeniroError(
            f"--chunk-size {config.chunk_size} is larger than the model's maximum of {max_positions} positions; "
            f"pass --chunk-size {max_positions} or less"
        )
    chunks = chunk_texts(tokenizer.backend_tokenizer, eval_texts, config.chunk_size)
    eval_set = premask(chunks, config.eval_seed, tokenizer.mask_token_id, len(tokenizer))
    if not (eval_set.labels != -100).any():
        raise DeniroError(
            f"the {len(eval_texts)} test reviews of --eval-texts make no masked token in chunks of --chunk-size "
            f"{config.chunk_size}; pass more --eval-texts or a smaller --chunk-size"
        )
    return eval_set


def sample_texts(config: ShrinkConfig) -> tuple[list[str], list[str]]:
    """Seeded samples: train texts to count pieces on, test texts to score on (one generator, in that order)."""
    texts = load_text_splits(config.dataset, ["train", "test"])
    rng = np.random.default_rng(config.eval_seed)
    count_texts = [
        texts["train"][i]
        for i in rng.choice(len(texts["train"]), min(config.count_texts, len(texts["train"])), replace=False)
    ]
    eval_texts = [
        texts["test"][i]
        for i in rng.choice(len(texts["test"]), min(config.eval_texts, len(texts["test"])), replace=False)
    ]
    return count_texts, eval_texts


def main(config: ShrinkConfig) -> list[dict]:
    check_config(config)
    model, tokenizer = load_model(config)
    count_texts, eval_texts = sample_texts(config)
    order = piece_order(tokenizer, count_texts)
    eval_set = evaluation_set(config, tokenizer, eval_texts, model.config.max_position_embeddings)
    # the positions whose input is [MASK] (not 80/10/10's random or kept 20 %): what fill-mask serves
    at_mask = eval_set.input_ids[eval_set.labels != -100] == tokenizer.mask_token_id  # [n_masked]
    rows, reference = [], None
    for variant in variants(config, len(tokenizer), len(tokenizer.all_special_ids)):
        ppl, top1, pruned = score(model, eval_set, variant, order, tokenizer.unk_token_id)
        reference = top1 if reference is None else reference
        same = top1 == reference
        size = package_bytes(model, variant.keep, variant.int8_embedding, variant.int8_rows)
        rows.append(
            {
                **asdict(variant),
                "perplexity": round(ppl, 3),
                "top1_agreement_vs_fp32": round(float(same.mean()), 4),
                "top1_agreement_at_mask_inputs": round(float(same[at_mask].mean()), 4),
                "labels_pruned": round(pruned, 4),
                "est_int8_graph_mb": round(size / 1e6, 2),
            }
        )
        log.info("%s", rows[-1])
    if config.output:  # aside, then renamed: an interrupted write leaves the previous file
        write_text_atomically(
            Path(config.output).expanduser(), json.dumps({"config": asdict(config), "rows": rows}, indent=2) + "\n"
        )
    return rows


def run(argv: list[str] | None = None) -> int:
    from deniro_rt.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m train.shrink", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, default in asdict(ShrinkConfig(model="", dataset="")).items():
        kind = int if isinstance(default, int) else str
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default or None,
            required=name in ("model", "dataset"),
            help=HELP[name] + ("" if name in ("model", "dataset") else f" (default: {default or 'none'})"),
        )
    setup_logging(ours=("train",))
    config = ShrinkConfig(**vars(parser.parse_args(argv)))
    return run_main(lambda: main(config), interrupted=interrupted(config))


def interrupted(config: ShrinkConfig) -> str:
    """Ctrl-C's line (it was a KeyboardInterrupt traceback): --output is only written at the end, atomically."""
    if config.output:
        return f"interrupted: nothing written to {config.output} (the rows logged above were measured)"
    return "interrupted: the rows logged above were measured, the others not"


if __name__ == "__main__":
    sys.exit(run())
