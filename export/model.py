"""Load the checkpoint to export, and the two torch modules that are traced into ONNX graphs."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deniro_rt.artifact import sha256_file
from deniro_rt.data import looks_like_path
from deniro_rt.errors import DeniroError
from train.model import MaskedOnlyMLM
from train.tokenizer import load_tokenizer

log = logging.getLogger(__name__)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class Source:
    """The checkpoint being exported."""

    model: nn.Module  # a DistilBertForMaskedLM in eval mode, fp32, on CPU
    tokenizer: object  # a transformers fast tokenizer with a mask token
    weights: list[str]  # weight file names, for the manifest
    sha256: str  # of the weights file (of the sorted per-file digests when sharded)
    rounding: dict | None = None  # --weights int8: how the weights were rounded and what it cost
    table_8bit: object = None  # --table-8bit-rows: the table rows rounded to 8 bits (np.ndarray of ids)


def load_source(name: str, tokenizer_name: str | None, attn_implementation: str) -> Source:
    model = load_mlm(name, resolve_attn_implementation(attn_implementation))
    tokenizer = load_tokenizer(
        tokenizer_name or name, hint="pass --tokenizer with the folder of the tokenizer the model was trained with"
    )
    if tokenizer.mask_token_id >= model.config.vocab_size or len(tokenizer) > model.config.vocab_size:
        raise DeniroError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} "
            f"embeddings; pass the --tokenizer the model was trained with"
        )
    weights = weight_files(name)
    return Source(model, tokenizer, [w.name for w in weights], weights_digest(weights))


def _looks_like_path(name: str) -> bool:
    return looks_like_path(name) or Path(name).exists()


def resolve_attn_implementation(requested: str) -> str:
    """auto: the attention whose traced graph ONNX Runtime fuses with the installed transformers.

    With transformers 4.57 only the sdpa graph fuses (ORT's DistilBERT pattern rejects the eager
    graph's mask fill); with transformers 5.x the sdpa graph fuses nothing and eager fuses fully.
    """
    if requested != "auto":
        return requested
    import transformers

    return "sdpa" if int(transformers.__version__.split(".")[0]) < 5 else "eager"


def check_model_folder(folder: Path) -> None:
    """A folder without config.json, named for what it is: a run's checkpoint or an unfinished run say how to
    get a model out of them (transformers only says "Unrecognized model")."""
    if (folder / "config.json").is_file():
        return
    run = folder.parent.parent if (folder / "trainer_state.json").is_file() else folder
    what = f"a checkpoint of the python -m train run in {run} (training state, not a model)"
    if (run / "config.json").is_file():
        raise DeniroError(f"--model {folder}: {what}; export the run's model: --model {run}")
    if (run / "train_config.json").is_file() and (run / "checkpoints").is_dir():
        what = what if run != folder else f"the unfinished python -m train run in {run} (no model written yet)"
        raise DeniroError(
            f"--model {folder}: {what}; finish the run with python -m train --output {run} --resume and its "
            f"options, then export --model {run}"
        )
    raise DeniroError(
        f"--model {folder}: no config.json in the folder; pass a save_pretrained folder, e.g. the --output of "
        "python -m train"
    )


def load_mlm(name: str, attn_implementation: str) -> nn.Module:
    """AutoModelForMaskedLM with the MLM head checked present; DistilBERT only (the fast graph's head)."""
    from transformers import AutoModelForMaskedLM

    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise DeniroError(
            f"--model {name}: folder not found (pass a save_pretrained folder, e.g. the "
            f"--output of python -m train, or a hub id)"
        )
    if Path(name).expanduser().is_dir():
        check_model_folder(Path(name).expanduser())
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(Path(name).expanduser()) if _looks_like_path(name) else name,
            output_loading_info=True,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
        )
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        where = "folder" if Path(name).expanduser().is_dir() else "hub id (there is no such folder)"
        raise DeniroError(
            f"could not load a masked-LM checkpoint from {where} {name!r} ({type(exc).__name__}: "
            f"{first}); pass a save_pretrained folder of a DistilBertForMaskedLM"
        ) from exc
    # Loading a checkpoint without its head "works" with a random head; refuse it instead.
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise DeniroError(
            f"{name!r} has no masked-LM head (missing weights: {', '.join(sorted(missing)[:4])}); "
            f"export needs a DistilBertForMaskedLM checkpoint such as python -m train writes"
        )
    if model.config.model_type != "distilbert":
        raise DeniroError(
            f"{name!r} is a {model.config.model_type} model; the export supports DistilBERT "
            f"masked LMs (the fast graph uses DistilBERT's MLM head)"
        )
    return model.eval()


def weight_files(name: str) -> list[Path]:
    """The checkpoint's weight files: in the folder, or in the local hub cache for a hub id."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        for pattern in WEIGHT_PATTERNS:
            found = sorted(folder.glob(pattern))
            if found:
                return found
        return []
    from transformers.utils import cached_file

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
        if path:
            return [Path(path)]
    return []


def weights_digest(files: list[Path]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for path in files:  # sharded (or absent): hash of the per-file digests, in name order
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- traced modules
class FastFillMask(nn.Module):
    """Encoder -> hidden rows at the masks only -> LM head -> log-softmax -> top-k and target log-probs.

    The LM head is [hidden -> vocab]; running it on the masked rows only means no [batch, seq, vocab]
    tensor exists, which is most of the cost of fill-mask on a small model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.mlm = MaskedOnlyMLM(model)  # reuse training's masked-rows head

    def forward(self, input_ids, attention_mask, mask_index, target_ids, top_k):
        hidden = self.mlm.model.distilbert(input_ids=input_ids, attention_mask=attention_mask)[0]  # [batch, seq, H]
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mask_index)  # [n, H]
        log_probs = torch.log_softmax(self.mlm.head(rows), dim=-1)  # [n, vocab]
        # top_k[0] is traced as a read of the input (graphs.bind_top_k makes sure of it)
        topk_logprobs, topk_ids = torch.topk(log_probs, top_k[0], dim=-1)  # [n, k]
        target_logprobs = log_probs.gather(1, target_ids)  # [n, t]
        return topk_logprobs, topk_ids, target_logprobs


class FullFillMask(nn.Module):
    """The standard masked-LM forward: logits at every position (Optimum's model.onnx layout).

    The head runs on the flattened [batch * seq, H] rows, as in the fast graph: a 2-D Linear traces to
    a Gemm that reads the embedding matrix the projection is tied to, where the 3-D one traces to a
    MatMul on a transposed copy of it (a second vocab x hidden matrix in the file).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.mlm = MaskedOnlyMLM(model)

    def forward(self, input_ids, attention_mask):
        hidden = self.mlm.model.distilbert(input_ids=input_ids, attention_mask=attention_mask)[0]  # [batch, seq, H]
        logits = self.mlm.head(hidden.reshape(-1, hidden.shape[-1]))  # [batch * seq, vocab]
        return logits.reshape(hidden.shape[0], hidden.shape[1], -1)  # [batch, seq, vocab]


@torch.no_grad()
def torch_logits(model: nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """transformers' own forward. [batch, seq] -> logits [batch, seq, vocab] float32."""
    out = model(
        input_ids=torch.from_numpy(np.asarray(input_ids, np.int64)),
        attention_mask=torch.from_numpy(np.asarray(attention_mask, np.int64)),
    )
    return out.logits.float().numpy()


@torch.no_grad()
def torch_mask_logits(
    model: nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray, mask_index: np.ndarray
) -> np.ndarray:
    """The PyTorch reference at the mask rows: transformers' encoder, then the MLM head on those rows.

    Equal to torch_logits(...)[mask rows] (the head is applied per position) without computing the
    head at every position, which is most of the reference's time for a 30k vocabulary.
    [batch, seq], mask_index [n] -> logits [n, vocab] float32.
    """
    mlm = MaskedOnlyMLM(model)
    hidden = model.distilbert(
        input_ids=torch.from_numpy(np.asarray(input_ids, np.int64)),
        attention_mask=torch.from_numpy(np.asarray(attention_mask, np.int64)),
    )[0]
    rows = hidden.reshape(-1, hidden.shape[-1])[torch.from_numpy(np.asarray(mask_index, np.int64))]  # [n, H]
    return mlm.head(rows).float().numpy()
