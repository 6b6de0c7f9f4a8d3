"""Every fill-mask engine behind one tiny interface: `Engine.fill_batch(texts, batch_size)`.

Each call is end to end: raw strings in, tokenization, the model, top-k and the decoded
suggestions (token strings and filled-in sequences, as transformers' fill-mask pipeline returns)
out. The returned `Prediction` keeps the top-k ids and their log-probabilities for the parity and
agreement checks; the decoded strings are built and dropped, as a caller would use them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deniro_rt.errors import DeniroError
from deniro_rt.providers import COMPUTED, CPU, CUDA, RUNS_ON, artifact_precision

log = logging.getLogger(__name__)
CPU_PRECISIONS = tuple(p for p, providers in RUNS_ON.items() if CPU in providers)  # fp32, int8
CUDA_PRECISIONS = tuple(p for p, providers in RUNS_ON.items() if CUDA in providers)  # fp32, fp16


@dataclass
class Prediction:
    ids: np.ndarray  # [n_texts, k] int64, best first
    logprobs: np.ndarray  # [n_texts, k] float64 (NaN where the engine gives no probabilities)


class GraphPrediction(Prediction):
    """The raw graph outputs of one model-only call, turned into a Prediction only when read (the
    reordering to input order is host work that model-only timing leaves out)."""

    def __init__(self, outputs: list[list[np.ndarray]], order: np.ndarray):
        self._outputs, self._order, self._done = outputs, order, None

    def _build(self) -> Prediction:
        if self._done is None:
            lp = np.concatenate([out[0] for out in self._outputs]).astype(np.float64)  # [n, k], length-sorted
            ids = np.concatenate([out[1] for out in self._outputs]).astype(np.int64)  # [n, k]
            in_order = np.empty_like(self._order)
            in_order[self._order] = np.arange(len(self._order))
            self._done = Prediction(ids[in_order], lp[in_order])
        return self._done

    @property
    def ids(self) -> np.ndarray:
        return self._build().ids

    @property
    def logprobs(self) -> np.ndarray:
        return self._build().logprobs


@dataclass
class Context:
    """What every engine of a run shares: the device, the artifact and the PyTorch checkpoint."""

    device: str  # cpu | cuda
    artifact: Path
    manifest: object  # deniro_rt.artifact.Manifest
    torch_model: Path | None
    top_k: int
    _tokenizer: object = None
    _models: dict | None = None
    _runtimes: dict | None = None

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.torch_model))
        return self._tokenizer

    def model(self, precision: str = "fp32"):
        """The transformers masked LM on the device, loaded once per precision and shared."""
        self._models = self._models or {}
        if precision not in self._models:
            rounded = bool(self.manifest.raw.get("weight_rounding"))
            table_8bit = mixed_rows_of(self.manifest.graph_path("fp32")) if rounded else None
            self._models[precision] = load_torch_model(self.torch_model, self.device, precision, rounded, table_8bit)
        return self._models[precision]

    def runtime(self, precision: str):
        """deniro_rt.FillMask on the artifact, one per precision, shared by the e2e and model-only engines."""
        import deniro_rt

        self._runtimes = self._runtimes or {}
        if precision not in self._runtimes:
            self._runtimes[precision] = deniro_rt.FillMask(
                model=str(self.artifact), device=self.device, precision=precision
            )
        return self._runtimes[precision]

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def mixed_rows_of(graph: Path):
    """The 8-bit rows of the graph's mixed 8/4-bit table (export --table-8bit-rows), None without one."""
    import onnx

    from export.weights import mixed_8bit_rows

    return mixed_8bit_rows(onnx.load(str(graph)))


def load_torch_model(path: Path, device: str, precision: str, rounded: bool = False, table_8bit=None):
    """rounded: the artifact was exported with --weights int8, so PyTorch runs the model it holds (the
    checkpoint's weights rounded the same way, export/weights.py; `table_8bit`: the 8-bit rows of a mixed
    table), not the unrounded checkpoint."""
    from transformers import AutoModelForMaskedLM

    from export.weights import round_weights

    try:
        model = AutoModelForMaskedLM.from_pretrained(str(path))
    except Exception as exc:
        raise DeniroError(
            f"could not load a transformers masked LM from {path} ({type(exc).__name__}); "
            f"pass --torch-model with the save_pretrained folder the artifact was "
            f"exported from"
        ) from exc
    if rounded:
        round_weights(model, table_8bit)
    model = model.half() if precision == "fp16" else model  # bf16 keeps fp32 weights: autocast (autocast())
    return model.to(device).eval()


def autocast(precision: str, device: str):
    """bf16: torch.autocast, the two lines a PyTorch user adds for bf16 matmuls (AMX / AVX-512 BF16 on CPU);
    fp32 and fp16 (a .half() model) run as they are."""
    import contextlib

    import torch

    return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


class Engine:
    name = "engine"
    scope = "e2e"  # e2e: strings in, decoded suggestions out; model: the graph alone on prepared inputs

    def __init__(self, ctx: Context, precision: str = "fp32"):
        self.ctx = ctx
        self.precision = precision
        self.provider = f"torch-{ctx.device}"

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        raise NotImplementedError

    def batch_sizes(self, wanted: list[int]) -> list[int]:
        """The batch sizes this engine is measured at (pytorch-card: one text at a time)."""
        return wanted

    def prepare(self, calls: list[list[str]], batch_size: int) -> None:
        """Called untimed with every text list fill_batch will get (only model-only engines use it)."""

    @property
    def label(self) -> str:
        return f"{self.name}/{self.precision}"


# --------------------------------------------------------------------------- PyTorch engines
class PytorchCard(Engine):
    """The model card's code: one text at a time, full logits, torch.topk, decode, replace.

    Wrapped in torch.no_grad() (what a careful user adds; the card's snippet leaves autograd on).
    """

    name = "pytorch-card"

    def __init__(self, ctx: Context, precision: str = "fp32"):
        super().__init__(ctx, precision)
        self.tokenizer, self.model = ctx.tokenizer(), ctx.model(precision)

    def batch_sizes(self, wanted: list[int]) -> list[int]:
        return [1]

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        import torch

        rows = []
        with torch.no_grad(), autocast(self.precision, self.ctx.device):
            for text in texts:
                rows.append(self._one(text, torch))
        ids = np.array(rows, dtype=np.int64)
        return Prediction(ids, np.full(ids.shape, np.nan))

    def _one(self, text: str, torch) -> list[int]:
        tok = self.tokenizer
        inputs = tok(text, return_tensors="pt").to(self.ctx.device)
        token_logits = self.model(**inputs).logits
        mask_token_index = torch.where(inputs["input_ids"] == tok.mask_token_id)[1]
        mask_token_logits = token_logits[0, mask_token_index, :]
        top_tokens = torch.topk(mask_token_logits, self.ctx.top_k, dim=1).indices[0].tolist()
        _ = [text.replace(tok.mask_token, tok.decode([token])) for token in top_tokens]
        return top_tokens


class PytorchBatched(Engine):
    """transformers batched: pad a batch, one forward, log-softmax and top-k at the masks, decode."""

    name = "pytorch-batched"

    def __init__(self, ctx: Context, precision: str = "fp32"):
        super().__init__(ctx, precision)
        self.tokenizer, self.model = ctx.tokenizer(), ctx.model(precision)

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        parts = [self._batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return Prediction(np.concatenate([p.ids for p in parts]), np.concatenate([p.logprobs for p in parts]))

    def _batch(self, texts: list[str]) -> Prediction:
        import torch

        with torch.inference_mode(), autocast(self.precision, self.ctx.device):
            logprobs, input_ids, where = mask_logprobs(self.model, self.tokenizer, texts, self.ctx.device)
            top = torch.topk(logprobs, self.ctx.top_k, dim=-1)
            ids, values = top.indices.cpu().numpy(), top.values.double().cpu().numpy()
        decode_suggestions(self.tokenizer, input_ids.cpu().numpy(), where.cpu().numpy(), ids)
        return Prediction(ids.astype(np.int64), values)


def mask_logprobs(model, tokenizer, texts: list[str], device: str):
    """(log-softmax float32 [n_texts, vocab] at each text's single mask, input_ids, (row, col) of masks)."""
    import torch

    enc = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    logits = model(**enc).logits  # [batch, seq, vocab]
    where = torch.nonzero(enc["input_ids"] == tokenizer.mask_token_id)  # [n_masks, 2]
    if where.shape[0] != len(texts):
        raise DeniroError(f"{where.shape[0]} masks in {len(texts)} texts: the workload has one per text")
    rows = logits[where[:, 0], where[:, 1]].float()
    return torch.log_softmax(rows, dim=-1), enc["input_ids"], where


def decode_suggestions(tokenizer, input_ids: np.ndarray, where: np.ndarray, ids: np.ndarray) -> list:
    """What the fill-mask pipeline returns per candidate: token_str and the filled-in sequence."""
    out = []
    for (row, col), candidates in zip(where, ids):
        tokens = input_ids[row][input_ids[row] != tokenizer.pad_token_id]
        filled = []
        for token in candidates:
            tokens[col] = token
            filled.append(
                {
                    "token": int(token),
                    "token_str": tokenizer.decode([int(token)]),
                    "sequence": tokenizer.decode(tokens, skip_special_tokens=True),
                }
            )
        out.append(filled)
    return out


# --------------------------------------------------------------------------- pipelines
def from_fill_results(results, n_texts: int, k: int) -> Prediction:
    """Pipeline-style output (per text a list of {"score", "token", ...}) -> Prediction."""
    if n_texts == 1 and results and isinstance(results[0], dict):
        results = [results]  # a one-text call returns the flat list of its mask
    if len(results) != n_texts:
        raise DeniroError(f"engine returned {len(results)} results for {n_texts} texts")
    ids = np.zeros((n_texts, k), dtype=np.int64)
    logprobs = np.zeros((n_texts, k), dtype=np.float64)
    for i, candidates in enumerate(results):
        if candidates and not isinstance(candidates[0], dict):
            raise DeniroError("engine returned several masks for one text; the workload has one per text")
        ids[i] = [c["token"] for c in candidates]
        logprobs[i] = [math.log(c["score"]) if c["score"] > 0 else -math.inf for c in candidates]
    return Prediction(ids, logprobs)


class HfPipeline(Engine):
    """transformers `pipeline("fill-mask")` fed the whole list with batch_size (the documented way)."""

    name = "hf-pipeline"

    def __init__(self, ctx: Context, precision: str = "fp32"):
        super().__init__(ctx, precision)
        self.pipe = self._pipeline(ctx.model(precision))

    def _pipeline(self, model):
        from transformers import pipeline

        return pipeline("fill-mask", model=model, tokenizer=self.ctx.tokenizer(), device=self.ctx.device)

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        results = self.pipe(list(texts), batch_size=batch_size, top_k=self.ctx.top_k)
        return from_fill_results(results, len(texts), self.ctx.top_k)


class OptimumOrt(HfPipeline):
    """Optimum's ORTModelForMaskedLM on the artifact's model.onnx, in the same pipeline."""

    name = "optimum-ort"

    def __init__(self, ctx: Context, precision: str = "fp32"):
        from optimum.onnxruntime import ORTModelForMaskedLM

        Engine.__init__(self, ctx, precision)
        full = ctx.manifest.raw.get("full_graph")
        if not full or not (ctx.artifact / full).is_file():
            raise Skip("the artifact has no full graph (model.onnx); export with it to compare Optimum")
        self.provider = "CUDAExecutionProvider" if ctx.device == "cuda" else "CPUExecutionProvider"
        # IO binding off: with it, Optimum 2.1 cannot infer the fused graph's symbolic logits shape on
        # CUDA (NameError 'Reshapelogits_dim_2', seen on an H100); plain session.run is what it does on CPU
        model = ORTModelForMaskedLM.from_pretrained(
            str(ctx.artifact), file_name=full, provider=self.provider, use_io_binding=False
        )
        self.pipe = self._pipeline(model)

    def _pipeline(self, model):
        from transformers import pipeline

        return pipeline("fill-mask", model=model, tokenizer=self.ctx.tokenizer())


class DeniroRt(Engine):
    name = "deniro_rt"

    def __init__(self, ctx: Context, precision: str = "fp32"):
        super().__init__(ctx, precision)
        self.fm = ctx.runtime(precision)
        self.provider = str(self.fm.provider)

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        results = self.fm.fill(list(texts), top_k=self.ctx.top_k, batch_size=batch_size)
        return from_fill_results(results, len(texts), self.ctx.top_k)


class DeniroRtArrays(DeniroRt):
    """deniro_rt end to end through the columnar fill_arrays (ids and scores as arrays, no dict or decoded
    string per candidate): what a batch job or a service that returns arrays runs."""

    name = "deniro_rt-arrays"

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        preds = self.fm.fill_arrays(list(texts), top_k=self.ctx.top_k, batch_size=batch_size)
        first = np.searchsorted(preds.text_index, np.arange(len(texts)))  # [n_texts] each text's first mask row
        with np.errstate(divide="ignore"):
            return Prediction(preds.token_ids[first], np.log(preds.scores[first]))


class DeniroRtModel(DeniroRt):
    """The graph alone: deniro_rt's own run function (session.run on CPU; IO binding / CUDA graphs on
    CUDA, as fill uses them) on feeds tokenized and padded ahead, untimed. Beside the deniro_rt rows,
    host overhead per call = end-to-end p50 - this p50 (report.overhead)."""

    name = "deniro_rt-model"
    scope = "model"

    def __init__(self, ctx: Context, precision: str = "fp32"):
        super().__init__(ctx, precision)
        self.prepared: dict[int, tuple] = {}  # id(text list) -> (that list, feeds, mask-row order)

    def prepare(self, calls: list[list[str]], batch_size: int) -> None:
        self.prepared = {
            id(texts): (texts, *self.fm.prepared_feeds(texts, self.ctx.top_k, batch_size)) for texts in calls
        }

    def fill_batch(self, texts: list[str], batch_size: int) -> Prediction:
        entry = self.prepared.get(id(texts))
        if entry is None or entry[0] is not texts:  # preparing here would time host work as model time
            raise DeniroError("deniro_rt-model: fill_batch got a text list prepare() did not see")
        _, feeds, order = entry
        return GraphPrediction([self.fm.run_graph(feed) for feed in feeds], order)


class Skip(Exception):
    """An engine that cannot run in this setup; the report lists it with the reason."""


ENGINE_CLASSES = {
    cls.name: cls
    for cls in (PytorchCard, PytorchBatched, HfPipeline, OptimumOrt, DeniroRt, DeniroRtArrays, DeniroRtModel)
}


def torch_precisions(name: str, device: str) -> list[str]:
    """pytorch-batched also runs fp16 on CUDA; on CPU pytorch-card and pytorch-batched also run bf16 autocast
    (issue 22: what a PyTorch user gets from two lines); the pipelines are fp32 (the card's setup)."""
    if name == "pytorch-batched" and device == "cuda":
        return ["fp32", "fp16"]
    if name in ("pytorch-card", "pytorch-batched") and device == "cpu":
        return ["fp32", "bf16"]
    return ["fp32"]


def deniro_precisions(manifest, device: str, wanted: str | None) -> list[str]:
    """The precisions to run: --precisions, else those the artifact has that suit the device plus the one
    the runtime picks by default here (bf16 via OpenVINO where the artifact's bf16 record passed and this CPU
    runs it by default; otherwise the computed precisions only when asked for)."""
    have = list(manifest.graphs) + [p for p, (graph, _) in COMPUTED.items() if graph in manifest.graphs]
    if wanted:
        asked = [p.strip() for p in wanted.split(",") if p.strip()]
        missing = [p for p in asked if p not in have]
        if missing:
            raise DeniroError(f"--precisions {', '.join(missing)}: the artifact has only {', '.join(have)}")
        return asked
    suits = CUDA_PRECISIONS if device == "cuda" else CPU_PRECISIONS
    chosen = [p for p in suits if p in have]
    default = artifact_precision(None, CUDA if device == "cuda" else CPU, manifest)  # what FillMask picks here
    return chosen + ([default] if default not in chosen else [])


def make_engines(ctx: Context, names: list[str], precisions: list[str]) -> tuple[list[Engine], list[dict]]:
    """The engines to compare, in a fixed order; those that cannot run are returned as skips."""
    engines, skipped = [], []
    for name in names:
        for precision in precisions if name.startswith("deniro_rt") else torch_precisions(name, ctx.device):
            try:
                engines.append(ENGINE_CLASSES[name](ctx, precision))
            except Skip as exc:
                log.warning("%s/%s skipped: %s", name, precision, exc)
                skipped.append({"engine": name, "precision": precision, "reason": str(exc)})
    return engines, skipped
