"""FillMask: one ONNX Runtime session on the fast graph (mask-only head, top-k in the graph).

Hot path per call (fill_arrays; fill is a thin layer over it): validate -> `encode_batch_fast` into one
flat id array -> sort by length, pad per batch with NumPy (no loop per text) -> one session.run per batch
(only mask rows cross back: top-k ids and log-probs) -> restore input order with index arrays. Strings
(token_str, sequences) are built only by the dict layer (Predictions.to_dicts) or on demand.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer, decoders

from .artifact import FAST_INPUTS, TOKENIZER_FILE, clean_up_spaces, cleans_up_spaces, load_manifest, verify_file
from .data import IGNORE_INDEX, MaskedBatch, perplexity
from .errors import CudaUnavailable, DeniroError, DeniroTypeError, TextError, TooLongError
from .models import DEFAULT_MODEL_DIR
from .predictions import Predictions, Source, TokenRows
from .providers import COMPUTED, CPU, artifact_precision, resolve_provider, session_options

OVERLAP_BLOCK = 2048  # texts tokenized per block when tokenization overlaps the device runs
SHOWN_CUT_TEXTS = 5  # texts a truncation warning names with their cut masks; the rest are counted
# Padded tokens per graph run on CPU (rows x the run's longest row). Beyond about a thousand the activations
# fall out of the caches: on the 2-core EPYC the shipped model took 1.9x longer a sentence at batch 512 than at
# 32 (short sentences) and 1.8x at batch 128 than at 4 (153-token reviews), in fp32 and bf16 alike. Runs are
# split below the caller's batch_size, never merged; on CPU a text's answer does not depend on its batch.
CPU_TOKEN_BUDGET = 1024

# A session and a compiled graph cannot cross processes; rebuilding one per pickled task would cost seconds each.
NOT_PICKLED = (
    "a FillMask (or a Predictions, which keeps one for its string views) cannot be pickled into another process; "
    "build one FillMask per process (in the pool's initializer, or call deniro_rt.fill there: it keeps one per "
    "process) and send texts and plain results: to_dicts(), to_arrow() or the NumPy columns"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """Graph outputs for the mask rows of one sequence."""

    topk_logprobs: np.ndarray  # [n_masks, k]
    topk_ids: np.ndarray  # [n_masks, k]
    target_logprobs: np.ndarray  # [n_masks, t]


class FillMask:
    """A reusable fill-mask runtime; thread-safe (one session, no per-call mutable state). Not picklable (one per
    process; copy.copy shares the session).

    device: cpu, cuda (CudaUnavailable if the session would fall back to the CPU) or auto (CUDA when it starts,
    else the CPU path with a warning).
    cuda_graph: on CUDA, replay CUDA graphs for bucketed shapes (deniro_rt/cuda.py). overlap:
    tokenize block i+1 while block i runs (default: on CUDA only; on CPU both compete for the cores).
    token_budget: at most this many padded tokens per graph run, below batch_size (default: CPU_TOKEN_BUDGET
    on CPU, none on CUDA, where big batches pay; 0: none, and on CPU the session's arena then keeps the largest
    run's activations: +520 MB after one batch of 16 x 512 tokens, docs/runtime.md).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        cuda_graph: bool = True,
        overlap: bool | None = None,
        overlap_block: int = OVERLAP_BLOCK,
        token_budget: int | None = None,
    ):
        self.manifest = load_manifest(DEFAULT_MODEL_DIR if model is None else model)
        self._place(resolve_provider(device), precision, token_budget)
        self.tokenizer = Tokenizer.from_file(str(verify_file(self.manifest, TOKENIZER_FILE)))
        self.tokenizer.no_truncation()  # long texts are reported (or windowed), never cut silently
        self.tokenizer.no_padding()
        self.mask_token, self.mask_id = self.manifest.mask_token, self.manifest.mask_token_id
        self.pad_id = self.manifest.pad_token_id
        self.clean_up = cleans_up_spaces(self.manifest)  # transformers' decode() then cleans the whole string
        self._open_or_fall_back(device == "auto", (precision, token_budget), threads, cuda_graph)
        self._check_graph()
        self.overlap = self.provider != CPU if overlap is None else overlap
        self.overlap_block = max(1, overlap_block)
        self._drop_ids = np.array([self.tokenizer.token_to_id(t) for t in self._edge_tokens()], np.int64)
        # neither this cache nor _run may hold self: a cycle would keep a dropped session (100+ MB) until a full GC
        self.token_str = lru_cache(maxsize=None)(partial(decode_one, self.tokenizer, self.clean_up))
        self.pieces = Pieces.for_tokenizer(self.tokenizer, set(self._drop_ids.tolist()), self.token_str)
        added = self.tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, token in added.items() if token.special)  # [UNK], [MASK], ...
        # the specials a one-mask sequence shows only because they are not dropped anyway: [UNK], a stray [MASK]
        self._shown_specials = self._special_ids - set(self._drop_ids.tolist())
        self._constants: dict[tuple, np.ndarray] = {}  # read-only feed arrays reused by every call
        self._vocab_strings: np.ndarray | None = None  # [vocab + 1] token strings, built on first use
        chosen = "" if precision else ", the default here"  # bf16 where OpenVINO has it (providers.py), or fp32
        log.info("deniro_rt: %s (%s%s, %s)", self.manifest.folder, self.precision, chosen, self.provider)

    def _place(self, provider: str, precision: str | None, token_budget: int | None) -> None:
        """Where and how the graph runs: provider, token budget, precision (bf16 may be the CPU default)."""
        self.provider = provider
        self.token_budget = check_budget(token_budget, provider)
        self.precision = artifact_precision(precision, provider, self.manifest)

    def _open_or_fall_back(self, auto: bool, asked: tuple, threads: int | None, cuda_graph: bool) -> None:
        """_open_session; with device='auto', a CUDA that does not start (onnxruntime-gpu on a machine without a
        working GPU) runs on the CPU instead. asked: the caller's (precision, token_budget)."""
        try:
            self._open_session(threads, cuda_graph)
        except CudaUnavailable as exc:
            if not auto:
                raise
            log.warning("%s; device='auto' runs on the CPU", exc)
            self._place(CPU, *asked)
            self._open_session(threads, cuda_graph)

    def _open_session(self, threads: int | None, cuda_graph: bool) -> None:
        """The session and its run(feed) function: plain session.run on CPU, IO binding on CUDA, OpenVINO
        for the computed precisions (bf16)."""
        graph_precision = COMPUTED.get(self.precision, (self.precision,))[0]
        self.graph_file = self.manifest.graphs[graph_precision]  # file name inside the artifact
        graph = str(verify_file(self.manifest, self.graph_file))
        self.cuda_graph = False
        if self.precision in COMPUTED:  # bf16: the fp32 graph compiled by OpenVINO (deniro_rt/openvino.py)
            from .openvino import OpenVinoGraph

            self.session = OpenVinoGraph(graph, self.precision, threads, self.pad_id, self.manifest.max_positions)
            self._run, self.input_names = self.session.run, self.session.input_names
            return
        options = session_options(self.provider, threads, self.precision)  # ONNX Runtime's, not OpenVINO's
        if self.provider == CPU:
            self.session = ort.InferenceSession(graph, options, providers=[CPU])
            self._run = partial(self.session.run, None)  # run(feed): all outputs
        else:
            from .cuda import make_runner, make_session  # GPU-only path, see deniro_rt/cuda.py

            self.session, self.cuda_graph = make_session(graph, options, cuda_graph)
            self._run = make_runner(self.session, self.cuda_graph, self.pad_id, self.manifest.max_positions)
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def __reduce__(self):
        """Pickling (what a process pool does to its tasks and results) is refused with the fix."""
        raise DeniroTypeError(NOT_PICKLED)

    def __copy__(self) -> FillMask:  # copy.copy: another handle on the same session (pickling is refused)
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def run_graph(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph alone on a prepared feed (what bench times as model-only): [topk lp, ids, target lp]."""
        return self._run(feed)

    def _check_graph(self) -> None:
        names = self.input_names  # set by _open_session for each engine
        if names != FAST_INPUTS:
            raise DeniroError(
                f"{self.graph_file} has inputs {names}, expected "
                f"{FAST_INPUTS}: the artifact is from another version; re-export it"
            )

    def _edge_tokens(self) -> list[str]:
        """[CLS]/[SEP]/[PAD]: dropped from decoded sequences (other [MASK]s stay visible)."""
        specials = [self.tokenizer.id_to_token(self.pad_id)]
        probe = self.tokenizer.encode("")
        specials += [self.tokenizer.id_to_token(i) for i in probe.ids]
        return [t for t in specials if t is not None]

    def shown(self, decoded: list[str]) -> list[str]:
        """Decoded strings as transformers' decode() returns them (clean_up_tokenization_spaces, if set)."""
        return [clean_up_spaces(text) for text in decoded] if self.clean_up else decoded

    # ------------------------------------------------------------------ public API
    def fill(
        self,
        texts: str | Sequence[str],
        top_k: int = 5,
        targets: Sequence[str] | str | None = None,
        batch_size: int = 64,
        truncation: bool = False,
        joint: bool = False,
    ):
        """Predict each [MASK]; see deniro_rt.fill for the full description."""
        batch, single = validate_texts(texts, self.mask_token)
        top_k, _ = min(check_top_k(top_k), self.manifest.vocab_size), check_batch_size(batch_size)
        if joint and targets is not None:
            raise DeniroError("joint=True fills the masks with the model's own choices; targets cannot rank there")
        if not batch:
            return []
        if targets is None and not joint:
            if len(batch) == 1:  # the latency path: no batching machinery
                result = self._fill_one(batch[0], top_k, truncation)
                return result if single else [result]
            return self.fill_arrays(batch, top_k, batch_size, truncation).to_dicts()
        pieces = target_pieces(self, targets) if targets is not None else []
        # a target of m pieces widens its mask to m: the text must leave room for the widest
        reserved = max((len(p) for _, p in pieces), default=1) - 1
        encoded, dropped = self.encode(batch, truncation, reserved=reserved)
        warn_cut_masks({t: cut for t, cut in enumerate(dropped) if cut}, self.manifest.max_positions - reserved)
        if joint:
            results = fill_jointly(self, encoded, batch_size)
        else:
            results = score_targets(self, encoded, pieces, top_k, batch_size)
            results = [restore_dropped(r, d) for r, d in zip(results, dropped)]
        return results[0] if single else results

    def fill_arrays(
        self,
        texts: str | Sequence[str],
        top_k: int = 5,
        batch_size: int = 64,
        truncation: bool = False,
        *,
        warn_truncated: bool = True,
    ) -> Predictions:
        """fill's top-k predictions as columns (see deniro_rt.predictions); same checks, same errors.
        warn_truncated=False: no warning for masks truncation cut away (rows with mask_position -1), for a
        caller that reports them in its own terms (the batch job names input rows, not places in a call)."""
        batch, single = validate_texts(texts, self.mask_token)
        top_k, _ = min(check_top_k(top_k), self.manifest.vocab_size), check_batch_size(batch_size)
        if self.overlap and len(batch) > self.overlap_block:
            rows, columns = self._arrays_overlapped(batch, top_k, batch_size, truncation)
        else:
            rows = self.encode_rows(batch, truncation)
            columns = self.score_rows(rows, top_k, batch_size)
        if warn_truncated:
            warn_cut_masks(rows.lost, self.manifest.max_positions)
        return Predictions(*columns, source=Source(self, rows, single, len(batch)))

    def perplexity(self, masked: MaskedBatch, batch_size: int = 64) -> dict:
        """Token-weighted perplexity of premasked rows (deniro_rt.data.premask), as train/ scores it."""
        labels = np.asarray(masked.labels)  # [rows, seq]
        rows = [r for r in range(len(labels)) if (labels[r] != IGNORE_INDEX).any()]
        seqs = [np.asarray(masked.input_ids[r], np.int64) for r in rows]
        positions = [np.flatnonzero(labels[r] != IGNORE_INDEX) for r in rows]
        targets = [labels[r][p][:, None] for r, p in zip(rows, positions)]  # [n_masks, 1] each
        scored = self.score(seqs, positions, targets, top_k=1, batch_size=batch_size)
        nll = -sum(float(s.target_logprobs.astype(np.float64).sum()) for s in scored)
        tokens = sum(len(p) for p in positions)
        return {"perplexity": perplexity(nll, tokens), "nll": nll, "tokens": tokens}

    # ------------------------------------------------------------------ encoding
    def encode(
        self, texts: list[str], truncation: bool, offset: int = 0, reserved: int = 0
    ) -> tuple[list[np.ndarray], list[list[int]]]:
        """Token ids per text (with [CLS]/[SEP]) and the mask numbers truncation cut away, per text."""
        rows = self.encode_rows(texts, truncation, offset, reserved)
        return [rows.row(t) for t in range(len(rows))], [rows.lost.get(t, []) for t in range(len(rows))]

    def encode_rows(self, texts: list[str], truncation: bool, offset: int = 0, reserved: int = 0) -> TokenRows:
        """All texts' ids as one flat array (encode_batch_fast: no offsets computed); with truncation, a
        window around the masks of over-long texts. offset: index of texts[0] in the caller's list
        (error messages name that index); reserved: positions each text leaves free (for widened targets)."""
        encodings = self.tokenizer.encode_batch_fast(texts)
        ids_per_text = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids_per_text), np.int64, len(texts))  # [n_texts]
        ids = np.fromiter(chain.from_iterable(ids_per_text), np.int64, int(lengths.sum()))  # [total]
        offsets = np.zeros(len(texts) + 1, np.int64)  # [n_texts + 1]
        np.cumsum(lengths, out=offsets[1:])
        owner = np.repeat(np.arange(len(texts)), lengths)  # [total] text of each token
        has_mask = np.bincount(owner[ids == self.mask_id], minlength=len(texts)) > 0  # [n_texts]
        too_long = lengths > self.manifest.max_positions - reserved  # [n_texts]
        bad = ~has_mask | (too_long & (not truncation))
        if bad.any():
            first = int(np.argmax(bad))
            if not has_mask[first]:
                raise TextError(no_mask_message(texts[first], offset + first, self.mask_token), offset + first)
            window = Window(self.manifest.max_positions, self.mask_id, truncation, reserved)
            window.fit(ids[offsets[first] : offsets[first + 1]], offset + first)  # raises the too-long error
        rows = TokenRows(ids, offsets)
        return self._windowed(rows, np.flatnonzero(too_long), offset, reserved) if too_long.any() else rows

    def _windowed(self, rows: TokenRows, long_texts: np.ndarray, offset: int, reserved: int) -> TokenRows:
        """rows with the over-long texts cut to a window around their masks (a rare path: a loop is fine)."""
        parts = np.split(rows.ids, rows.offsets[1:-1])  # [n_texts] arrays
        lost, window = {}, Window(self.manifest.max_positions, self.mask_id, True, reserved)
        for t in long_texts.tolist():
            parts[t], cut = window.fit(parts[t], offset + t)
            if cut:
                lost[t] = cut
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        return TokenRows(np.concatenate(parts), offsets, lost)

    # ------------------------------------------------------------------ the graph
    def score(
        self,
        seqs: list[np.ndarray],
        positions: list[np.ndarray] | None = None,
        targets: list[np.ndarray] | None = None,
        top_k: int = 5,
        batch_size: int = 64,
    ) -> list[Scored]:
        """Run the fast graph over sequences, batched by length; results in input order.

        positions: rows to score per sequence (default: its [MASK]s); targets: [n_rows, t] ids whose
        log-probs are wanted per sequence (default: none).
        """
        if positions is None:
            positions = [np.flatnonzero(s == self.mask_id) for s in seqs]
        results: list[Scored | None] = [None] * len(seqs)
        for chunk in self.batches(np.array([len(s) for s in seqs], np.int64), batch_size):
            outputs = self._run_batch(
                [seqs[i] for i in chunk],
                [positions[i] for i in chunk],
                None if targets is None else [targets[i] for i in chunk],
                top_k,
            )
            for i, scored in zip(chunk, outputs):
                results[i] = scored
        return results

    def _run_batch(self, seqs, positions, targets, top_k: int) -> list[Scored]:
        feed, counts = self.batch_feed(seqs, positions, targets, top_k)
        topk_lp, topk_ids, target_lp = self._run(feed)
        splits = np.cumsum(counts)[:-1]
        return [
            Scored(a, b, c)
            for a, b, c in zip(np.split(topk_lp, splits), np.split(topk_ids, splits), np.split(target_lp, splits))
        ]

    def batch_feed(self, seqs, positions, targets, top_k: int) -> tuple[dict[str, np.ndarray], list[int]]:
        """The graph inputs of one batch (padded to its longest sequence) and the mask count per sequence."""
        if len(seqs) == 1 and targets is None:
            return self._one_feed(seqs[0], positions[0], top_k), [len(positions[0])]
        seq_len = max(len(s) for s in seqs)
        input_ids = np.full((len(seqs), seq_len), self.pad_id, dtype=np.int64)  # [batch, seq]
        attention = np.zeros((len(seqs), seq_len), dtype=np.int64)  # [batch, seq]
        for row, ids in enumerate(seqs):
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
        mask_index = np.concatenate([row * seq_len + p for row, p in enumerate(positions)])  # [n]
        if targets is None:
            target_ids = np.zeros((len(mask_index), 1), dtype=np.int64)  # [n, 1] unused
        else:
            target_ids = np.concatenate(targets).astype(np.int64)  # [n, t]
        k = np.array([min(top_k, self.manifest.vocab_size)], dtype=np.int64)
        feed = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "mask_index": mask_index.astype(np.int64),
            "target_ids": target_ids,
            "top_k": k,
        }
        return feed, [len(p) for p in positions]

    def _one_feed(self, ids, positions, top_k: int) -> dict[str, np.ndarray]:
        """batch_feed of one sequence without targets, from cached read-only constants (the one-text path:
        no padding, the flat mask index is the position)."""
        return {
            "input_ids": np.array([ids], dtype=np.int64),  # [1, seq]
            "attention_mask": self._constant("ones", len(ids)),  # [1, seq]
            "mask_index": np.asarray(positions, dtype=np.int64),  # [n]
            "target_ids": self._constant("zeros", len(positions)),  # [n, 1] unused
            "top_k": self._constant("k", min(top_k, self.manifest.vocab_size)),
        }

    def chunk_feed(self, rows: TokenRows, chunk: np.ndarray, top_k: int) -> tuple[dict[str, np.ndarray], int]:
        """The graph inputs of the texts `chunk` (indices into rows), padded to the longest, built with NumPy
        over the whole batch; and the padded length (mask_index holds row * seq_len + position)."""
        lengths = rows.lengths[chunk]  # [batch]
        seq_len = int(lengths.max())
        if len(chunk) == 1:  # no padding: cached constants, the flat mask index is the position
            ids = rows.row(int(chunk[0]))
            return self._one_feed(ids, np.flatnonzero(ids == self.mask_id), top_k), seq_len
        valid = np.arange(seq_len) < lengths[:, None]  # [batch, seq]
        gather = np.minimum(rows.offsets[chunk][:, None] + np.arange(seq_len), len(rows.ids) - 1)  # [batch, seq]
        input_ids = np.where(valid, rows.ids[gather], self.pad_id)  # [batch, seq]
        mask_index = np.flatnonzero(input_ids == self.mask_id)  # [n] row-major: row * seq_len + position
        feed = {
            "input_ids": input_ids,
            "attention_mask": valid.astype(np.int64),
            "mask_index": mask_index,
            "target_ids": np.zeros((len(mask_index), 1), np.int64),  # [n, 1] unused
            "top_k": self._constant("k", min(top_k, self.manifest.vocab_size)),
        }
        return feed, seq_len

    def score_rows(self, rows: TokenRows, top_k: int, batch_size: int) -> tuple[np.ndarray, ...]:
        """Predictions' columns (text_index, mask_position, token_ids, scores) for all rows, batched by
        length (similar lengths share a batch: little padding), in input order."""
        if not len(rows.lengths):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, top_k), np.int64), np.zeros((0, top_k))
        parts = [self._run_chunk(rows, chunk, top_k) for chunk in self.batches(rows.lengths, batch_size)]
        text, position, logprobs, token_ids = (np.concatenate(c) for c in zip(*parts))
        back = np.argsort(text, kind="stable")  # input order; a text's masks stay in position order
        columns = (
            text[back],
            position[back],
            token_ids[back].astype(np.int64, copy=False),
            np.exp(logprobs[back].astype(np.float64)),
        )  # score = exp of the float32 log-prob in float64
        return with_cut_rows(*columns, rows.lost) if rows.lost else columns

    def _run_chunk(self, rows: TokenRows, chunk: np.ndarray, top_k: int) -> tuple[np.ndarray, ...]:
        feed, seq_len = self.chunk_feed(rows, chunk, top_k)
        topk_lp, topk_ids, _ = self._run(feed)  # [n, k] each
        flat = feed["mask_index"]  # [n]
        return chunk[flat // seq_len], flat % seq_len, topk_lp, topk_ids

    def prepared_feeds(
        self, texts: Sequence[str], top_k: int = 5, batch_size: int = 64
    ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """The feeds fill(texts, top_k, batch_size) runs, built ahead, and the text order of their rows
        (bench's model-only timing: the graph alone on inputs already prepared)."""
        rows = self.encode_rows(list(texts), truncation=False)
        chunks = self.batches(rows.lengths, batch_size)
        feeds = [self.chunk_feed(rows, chunk, top_k)[0] for chunk in chunks]
        return feeds, np.concatenate(chunks) if chunks else np.zeros(0, np.int64)

    def batches(self, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Indices of the rows of each graph run: sorted by length (similar lengths share a run: little
        padding), at most batch_size rows and token_budget padded tokens each."""
        order = np.argsort(lengths, kind="stable")  # [n_rows]
        return [order[part] for part in length_chunks(lengths[order], batch_size, self.token_budget)]

    def vocab_strings(self) -> np.ndarray:
        """[vocab + 1] object array: decode([id]) per id, then "" (what id -1, a cut row, looks up)."""
        if self._vocab_strings is None:  # built once; a race builds the same array twice, harmlessly
            ids = [[i] for i in range(self.manifest.vocab_size)]
            strings = self.shown(self.tokenizer.decode_batch(ids, skip_special_tokens=False)) + [""]
            self._vocab_strings = np.array(strings, dtype=object)
        return self._vocab_strings

    def filled_sequences(self, ids: list[int], position: int, tokens: list[int]) -> list[str]:
        """decode(ids with ids[position] replaced by t) for each t of tokens, specials dropped."""
        ids, position, tokens = self.as_transformers_shows(ids, position, tokens)
        if self.pieces:
            return self.shown(self.pieces.filled(ids, position, tokens))
        return self.decode_filled([(np.asarray(ids), position, t) for t in tokens])

    # ------------------------------------------------------------------ results
    def _fill_one(self, text: str, top_k: int, truncation: bool):
        """One text: encode, one graph run on a feed of cached constants, spliced sequences."""
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.manifest.max_positions or self.mask_id not in ids:
            return self.fill_arrays([text], top_k, 1, truncation).to_dicts()[0]  # the error, or the window
        positions = [i for i, t in enumerate(ids) if t == self.mask_id]
        topk_lp, topk_ids, _ = self._run(self._one_feed(ids, positions, top_k))
        return restore_dropped(self._predictions(ids, positions, topk_lp, topk_ids), [])

    def _constant(self, kind: str, n: int) -> np.ndarray:
        """Read-only feed arrays that depend on one size only: [1, n] ones, [n, 1] zeros, [k]."""
        array = self._constants.get((kind, n))
        if array is None:
            make = {
                "ones": lambda: np.ones((1, n), np.int64),
                "zeros": lambda: np.zeros((n, 1), np.int64),
                "k": lambda: np.array([n], np.int64),
            }[kind]
            array = make()
            array.flags.writeable = False
            self._constants[(kind, n)] = array
        return array

    def _predictions(
        self, ids: list[int], positions: list[int], topk_lp: np.ndarray, topk_ids: np.ndarray
    ) -> list[list[dict]]:
        """Per mask the top-k dicts: score = exp of the float32 log-prob taken in float64; spliced sequences."""
        scores, tokens = np.exp(topk_lp.astype(np.float64)).tolist(), topk_ids.tolist()  # [n_masks, k] each
        token_str, out = self.token_str, []
        for position, row_scores, row_tokens in zip(positions, scores, tokens):
            sequences = self.filled_sequences(ids, position, row_tokens)
            out.append(
                [
                    {"score": s, "token": t, "token_str": token_str(t), "sequence": q}
                    for s, t, q in zip(row_scores, row_tokens, sequences)
                ]
            )
        return out

    def _arrays_overlapped(
        self, texts: list[str], top_k: int, batch_size: int, truncation: bool
    ) -> tuple[TokenRows, tuple[np.ndarray, ...]]:
        """Tokenize block i+1 in a thread while block i runs (both release the GIL); blocks joined."""
        block = max(self.overlap_block, batch_size)
        blocks, parts = [], []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deniro-tokenize") as pool:
            pending = pool.submit(self.encode_rows, texts[:block], truncation, 0)
            for start in range(0, len(texts), block):
                rows = pending.result()
                if start + block < len(texts):
                    nxt = start + block
                    pending = pool.submit(self.encode_rows, texts[nxt : nxt + block], truncation, nxt)
                blocks.append(rows)
                parts.append(self.score_rows(rows, top_k, batch_size))
        return join_blocks(blocks, parts)

    def _prediction(self, logprob: float, token, sequence: str) -> dict:
        token_str = self.token_str(token) if isinstance(token, int) else self.decode_ids(token)
        return {"score": float(np.exp(logprob)), "token": token, "token_str": token_str, "sequence": sequence}

    def as_transformers_shows(self, ids: list[int], position: int, tokens: list) -> tuple[list[int], int, list]:
        """transformers decodes a text with one mask with skip_special_tokens=True: its [UNK]s (and a special
        candidate, [UNK] or [MASK]) vanish from `sequence`; with several masks they stay. Returns ids without
        those specials, the mask's position in them, and tokens with a special candidate made [PAD] (dropped)."""
        if ids.count(self.mask_id) != 1:
            return ids, position, tokens
        shown = self._shown_specials  # set operations in C: an ordinary text costs no Python loop here
        if shown.isdisjoint(ids[:position]) and shown.isdisjoint(ids[position + 1 :]) and shown.isdisjoint(tokens):
            return ids, position, tokens
        special = self._special_ids
        kept = [t for i, t in enumerate(ids) if i == position or t not in special]
        position -= sum(t in special for t in ids[:position])
        return kept, position, [self.pad_id if isinstance(t, int) and t in special else t for t in tokens]

    def decode_filled(self, candidates: list[tuple[np.ndarray, int, object]]) -> list[str]:
        """Decode each sequence with its mask at `position` replaced by token id(s), in one batch call."""
        candidates = [
            (np.asarray(ids), position, token[0])
            for ids, position, token in (self.as_transformers_shows(i.tolist(), p, [t]) for i, p, t in candidates)
        ]
        if self.pieces:
            return self.shown(
                [
                    self.pieces.decode(
                        ids[:position].tolist()
                        + ([token] if isinstance(token, int) else list(token))
                        + ids[position + 1 :].tolist()
                    )
                    for ids, position, token in candidates
                ]
            )
        filled = []
        for ids, position, token in candidates:
            pieces = [token] if isinstance(token, int) else list(token)
            filled.append(np.concatenate([ids[:position], pieces, ids[position + 1 :]]))
        return self.decode_batch(filled)

    def decode_batch(self, sequences: list[np.ndarray]) -> list[str]:
        """Decode without [CLS]/[SEP]/[PAD] (other [MASK]s stay visible)."""
        if self.pieces:
            return self.shown([self.pieces.decode(s.tolist()) for s in sequences])
        return self.shown(self.tokenizer_decode_batch(sequences))

    def tokenizer_decode_batch(self, sequences: list[np.ndarray]) -> list[str]:
        """decode_batch through the tokenizer itself (the reference the spliced decoding is tested against)."""
        kept = [s[~np.isin(s, self._drop_ids)].tolist() for s in sequences]
        return self.tokenizer.decode_batch(kept, skip_special_tokens=False)

    def decode_ids(self, ids) -> str:
        return self.shown([self.tokenizer.decode(list(ids), skip_special_tokens=False)])[0]


def decode_one(tokenizer: Tokenizer, clean_up: bool, token_id: int) -> str:
    """decode([token_id]) as transformers shows it (FillMask.shown's clean-up, without holding the FillMask)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return clean_up_spaces(text) if clean_up else text


# ---------------------------------------------------------------------- spliced decoding
class NextPieces(dict):
    """token id -> its text anywhere after the first position of a decoded sequence (filled lazily)."""

    def __init__(self, tokenizer: Tokenizer, anchor: int):
        super().__init__()
        self.tokenizer, self.anchor = tokenizer, anchor
        self.anchor_text = tokenizer.decode([anchor], skip_special_tokens=False)

    def __missing__(self, token: int) -> str:
        both = self.tokenizer.decode([self.anchor, token], skip_special_tokens=False)
        self[token] = piece = both[len(self.anchor_text) :]
        return piece


class Pieces:
    """decode() as string splicing, for WordPiece decoders (exact, not an approximation).

    tokenizers' WordPiece decoder maps each token to a piece on its own: the first token as it is,
    each later one '##'-stripped or space-prefixed, then cleaned up piece by piece; decode() joins
    the pieces. So decode(ids) == first(ids[0]) + next(ids[1]) + ..., and the k sequences of one mask
    are left + piece(candidate) + right, with left/right built once. tests/test_overhead.py checks
    it against tokenizer.decode_batch on IMDB sentences.
    """

    def __init__(self, tokenizer: Tokenizer, hidden: set[int], first, anchor: int):
        self.hidden = hidden  # ids left out of decoded sequences: [CLS]/[SEP]/[PAD]
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)  # ids beyond: no token, dropped
        self.first = first  # id -> decode([id]), cached
        self.next = NextPieces(tokenizer, anchor)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, hidden: set[int], first) -> Pieces | None:
        if not isinstance(tokenizer.decoder, decoders.WordPiece):
            return None  # other decoders may join pieces across tokens: keep the tokenizer's decode
        return cls(tokenizer, hidden, first, anchor=tokenizer.token_to_id("[UNK]") or 0)

    def visible(self, token: int) -> bool:
        return token not in self.hidden and 0 <= token < self.size

    def decode(self, ids: list[int]) -> str:
        kept = [t for t in ids if self.visible(t)]
        if not kept:
            return ""
        nxt = self.next
        return self.first(kept[0]) + "".join([nxt[t] for t in kept[1:]])

    def filled(self, ids: list[int], position: int, tokens: list[int]) -> list[str]:
        """decode(ids with ids[position] replaced by t) for each t of tokens."""
        nxt, hidden = self.next, self.hidden
        before = [t for t in ids[:position] if t not in hidden]
        right = "".join([nxt[t] for t in ids[position + 1 :] if t not in hidden])
        left = self.first(before[0]) + "".join([nxt[t] for t in before[1:]]) if before else ""
        out = []
        for t in tokens:
            if not self.visible(t):  # the candidate itself is dropped: the next token may become first
                out.append(self.decode(ids[:position] + [t] + ids[position + 1 :]))
            else:
                out.append(left + nxt[t] + right if before else self.first(t) + right)
        return out


# ---------------------------------------------------------------------- input checks
def validate_texts(texts, mask_token: str) -> tuple[list[str], bool]:
    if texts is None:
        raise DeniroTypeError(
            "texts is None; pass a string or a list of strings, each with "
            f"{mask_token} where a word should be predicted"
        )
    if isinstance(texts, str):
        texts, single = [texts], True
    elif isinstance(texts, (list, tuple, Sequence, np.ndarray)) and not isinstance(texts, (bytes, bytearray)):
        texts, single = list(texts), False  # any sequence of strings, a NumPy array of them too
    else:
        raise DeniroTypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DeniroTypeError(f"text {index} is {type(text).__name__}, expected a string with {mask_token}")
        if not text.strip():
            raise TextError(f"text {index} is empty; pass a sentence with {mask_token} in it", index)
        if not text.isascii():
            check_unicode(text, index)
    return texts, single


def check_unicode(text: str, index: int) -> None:
    """A lone surrogate (bytes that were not UTF-8, decoded with surrogateescape) cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError(
            f"text {index} is not valid Unicode (character {exc.start}: {text[exc.start]!r}, from bytes that "
            "are not UTF-8?); decode the input as UTF-8",
            index,
        ) from None


def check_batch_size(batch_size) -> int:
    return positive_int(batch_size, f"batch_size must be a whole number >= 1, got {batch_size!r}")


def positive_int(value, message: str) -> int:
    """value as an int: a wrong type (a float, a bool, a string) is a DeniroTypeError, a value below 1 a DeniroError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DeniroTypeError(message)
    if value < 1:
        raise DeniroError(message)
    return int(value)


def no_mask_message(text: str, index: int, mask_token: str) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    hint = (
        f" (the mask token is case-sensitive: write {mask_token})"
        if mask_token.lower() in text.lower()
        else f"; put {mask_token} where a word should be predicted"
    )
    return f"text {index} has no {mask_token}: {shown!r}{hint}"


def check_top_k(top_k) -> int:
    return positive_int(top_k, f"top_k must be a positive integer, got {top_k!r}")


@dataclass(frozen=True)
class Window:
    """How a text must fit the model: max_len positions, `reserved` of them left free (a target of m pieces
    widens its mask to m); with truncation a window around the masks is kept, else a long text is an error."""

    max_len: int
    mask_id: int
    truncation: bool
    reserved: int = 0

    def fit(self, ids: np.ndarray, index: int) -> tuple[np.ndarray, list[int]]:
        """Keep [CLS] + a window of the text around its masks + [SEP]; returns (ids, lost mask numbers)."""
        limit = self.max_len - self.reserved
        if len(ids) <= limit:
            return ids, []
        if not self.truncation:
            room = f" less the {self.reserved} extra pieces of the longest target" if self.reserved else ""
            raise TooLongError(
                f"text {index} is {len(ids)} tokens, more than the model's maximum of {self.max_len}{room}", index
            )
        inner, budget = ids[1:-1], limit - 2
        masks = np.flatnonzero(inner == self.mask_id)  # [n_masks]
        start = window_start(masks, budget, len(inner))
        lost = [n for n, p in enumerate(masks) if not start <= p < start + budget]  # warn_cut_masks names them
        return np.concatenate([ids[:1], inner[start : start + budget], ids[-1:]]), lost


def warn_cut_masks(lost: dict[int, list[int]], limit: int) -> None:
    """One warning per call for the masks truncation cut away (text -> mask numbers, texts numbered in the
    caller's list): a call over 100k texts used to log a line per text. The first few texts are named."""
    if not lost:
        return
    texts = sorted(lost)
    shown = ", ".join(f"text {t} masks {lost[t]}" for t in texts[:SHOWN_CUT_TEXTS])
    more = f", and {len(texts) - SHOWN_CUT_TEXTS} more texts" if len(texts) > SHOWN_CUT_TEXTS else ""
    warnings.warn(
        f"masks of {len(texts)} text{'s' if len(texts) > 1 else ''} lie outside the {limit}-token window kept by "
        f"truncation (0-based: {shown}{more}); their predictions are empty lists",
        stacklevel=3,  # the caller of fill or fill_arrays
    )


def window_start(masks: np.ndarray, budget: int, length: int) -> int:
    """Start of the `budget`-token window that keeps the most masks, with context on both sides."""
    if masks[-1] - masks[0] < budget:  # all masks fit: centre the window on them
        # never past the last mask: an even budget and an odd span rounded the centre one token early
        start = max((masks[0] + masks[-1]) // 2 - budget // 2, masks[-1] - budget + 1)
    else:  # keep the most masks, leaving an eighth of the window as left context
        starts = masks - budget // 8
        covered = np.searchsorted(masks, starts + budget) - np.searchsorted(masks, starts)
        start = starts[int(np.argmax(covered))]
    return int(np.clip(start, 0, length - budget))


def restore_dropped(per_mask: list, lost: list[int]) -> list:
    """Re-insert an empty prediction list for each mask that truncation cut away; unwrap one mask."""
    for n in lost:
        per_mask.insert(n, [])
    return per_mask[0] if len(per_mask) == 1 else per_mask


def with_cut_rows(text, position, token_ids, scores, lost: dict[int, list[int]]) -> tuple[np.ndarray, ...]:
    """Insert a row (position -1, ids -1, scores NaN) for each mask truncation cut away, at its place among
    its text's masks (fill gives such a mask []). Rows come in sorted by text, masks in position order."""
    number = np.arange(len(text)) - np.searchsorted(text, text)  # [n] ordinal among the text's kept masks
    extra_text, extra_number = [], []
    for t, cut in lost.items():
        mine = np.flatnonzero(text == t)  # [kept masks of t]
        number[mine] = [m for m in range(len(mine) + len(cut)) if m not in cut]
        extra_text += [t] * len(cut)
        extra_number += cut
    k, n_cut = token_ids.shape[1], len(extra_text)
    text = np.concatenate([text, np.array(extra_text, np.int64)])
    number = np.concatenate([number, np.array(extra_number, np.int64)])
    order = np.lexsort((number, text))  # by text, then mask number
    position = np.concatenate([position, np.full(n_cut, -1, np.int64)])[order]
    token_ids = np.concatenate([token_ids, np.full((n_cut, k), -1, np.int64)])[order]
    scores = np.concatenate([scores, np.full((n_cut, k), np.nan)])[order]
    return text[order], position, token_ids, scores


def join_blocks(blocks: list[TokenRows], parts: list[tuple[np.ndarray, ...]]) -> tuple[TokenRows, tuple]:
    """One TokenRows and one set of columns from consecutive blocks of texts (text indices shifted)."""
    firsts = np.cumsum([0] + [len(b) for b in blocks])  # [n_blocks + 1] first text of each block
    starts = np.cumsum([0] + [len(b.ids) for b in blocks])  # [n_blocks + 1] first token of each block
    offsets = np.concatenate([[0]] + [b.offsets[1:] + s for b, s in zip(blocks, starts)])
    lost = {t + int(f): cut for b, f in zip(blocks, firsts) for t, cut in b.lost.items()}
    rows = TokenRows(np.concatenate([b.ids for b in blocks]), offsets.astype(np.int64), lost)
    text = np.concatenate([p[0] + f for p, f in zip(parts, firsts)])
    return rows, (text, *(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)))


def check_budget(token_budget: int | None, provider: str) -> int:
    if token_budget is None:
        return CPU_TOKEN_BUDGET if provider == CPU else 0
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 0:
        raise DeniroError(f"token_budget must be a whole number >= 0 (0: no budget), got {token_budget!r}")
    return token_budget


def length_chunks(ordered: np.ndarray, batch_size: int, token_budget: int = 0) -> list[slice]:
    """Consecutive runs over length-sorted rows: at most batch_size rows and, with a budget, at most
    token_budget padded tokens (rows x the run's longest row) each; one row at least."""
    check_batch_size(batch_size)
    if not token_budget:
        return [slice(s, min(s + batch_size, len(ordered))) for s in range(0, len(ordered), batch_size)]
    out, start = [], 0
    while start < len(ordered):
        window = ordered[start : start + batch_size]  # [<= batch_size] ascending
        fits = np.arange(1, len(window) + 1) * window <= token_budget  # True then False: the cost only grows
        rows = max(1, int(fits.sum()))
        out.append(slice(start, start + rows))
        start += rows
    return out


def padded_tokens(lengths: np.ndarray, batch_size: int, token_budget: int = 0) -> int:
    """Tokens of the padded id matrices of ONE call of texts of these lengths, batched as FillMask.batches
    batches them (sorted by length, `batch_size` rows and `token_budget` tokens a run)."""
    ordered = np.sort(lengths)  # [n_texts]
    runs = length_chunks(ordered, batch_size, token_budget)
    return sum(int(ordered[run].max()) * len(ordered[run]) for run in runs)  # rows x longest, summed


def padding_fraction(lengths: np.ndarray, batch_size: int, token_budget: int = 0) -> float:
    """Share of padding in one call's padded id matrices (padded_tokens)."""
    return float(1 - np.sum(lengths) / max(1, padded_tokens(lengths, batch_size, token_budget)))


# ---------------------------------------------------------------------- targets and joint fill
def target_pieces(fm: FillMask, targets) -> list[tuple[str, list[int]]]:
    message = f"targets must be a non-empty list of non-empty strings, got {targets!r}"
    try:
        words = [targets] if isinstance(targets, str) else list(targets)
    except TypeError:  # not iterable (a number, None)
        raise DeniroTypeError(message) from None
    if not all(isinstance(w, str) for w in words):
        raise DeniroTypeError(message)
    if not words or not all(w.strip() for w in words):  # the right type, an unusable value
        raise DeniroError(message)
    words = list(dict.fromkeys(w.strip() for w in words))
    encodings = fm.tokenizer.encode_batch(words, add_special_tokens=False)
    # one candidate per spelling in pieces ("Movie" and "movie" are one word to an uncased model), as transformers
    by_pieces: dict[tuple[int, ...], str] = {}
    for word, encoding in zip(words, encodings):
        piece = fm.tokenizer.token_to_id(word)  # a piece as spelled ("##s", a token_str), as transformers looks it up
        ids = (piece,) if piece is not None else tuple(encoding.ids)
        by_pieces.setdefault(ids, word)  # the first spelling names the candidate
    pieces = [(w, list(ids)) for ids, w in by_pieces.items()]
    special = {i for i, token in fm.tokenizer.get_added_tokens_decoder().items() if token.special}
    unusable = [w for w, p in pieces if special & set(p)]  # [MASK], [UNK], ...: not words to rank
    if unusable:
        raise DeniroError(f"targets {unusable} are or contain special tokens; pass words the vocabulary can spell")
    empty = [w for w, p in pieces if not p]
    if empty:
        raise DeniroError(f"targets {empty} tokenize to nothing; pass words the vocabulary can spell")
    room = fm.manifest.max_positions // 2  # a target widens its mask to its pieces: half the model's positions at most
    too_long = [w[:40] for w, p in pieces if len(p) > room]
    if too_long:
        raise DeniroError(f"targets {too_long} are over {room} word pieces; pass words, not passages")
    return pieces


def score_targets(fm: FillMask, encoded, pieces: list[tuple[str, list[int]]], top_k: int, batch_size: int):
    """Rank the given words (target_pieces) at each mask. A word of m pieces is scored as a whole word: its
    mask is widened to m masks and the score is the product of each piece's probability at its position
    (one forward pass per width; the m masks are predicted independently, as for several masks)."""
    columns = {w: [p for _, p in pieces if len(p) == w] for w in sorted({len(p) for _, p in pieces})}
    owners, scored = [], []  # one (text, mask, width, position) and one Scored per widened sequence
    for width, words in columns.items():  # one score() per width: every row of a batch has n_words targets
        variants = widened_masks(fm, encoded, width)
        tgt = np.array(words, np.int64).T  # [width, n_words of this width]
        owners += [owner for owner, _, _ in variants]
        scored += fm.score(
            [v for _, v, _ in variants],
            [p for _, _, p in variants],
            [tgt] * len(variants),
            top_k=1,
            batch_size=batch_size,
        )
    return collect_targets(fm, encoded, pieces, owners, columns, scored, top_k)


def widened_masks(fm: FillMask, encoded, width: int) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    """Per (text, mask): ((text, mask, width, position), ids with that mask widened to `width` masks,
    the widened positions [width])."""
    out = []
    for t, ids in enumerate(encoded):
        for m, position in enumerate(np.flatnonzero(ids == fm.mask_id)):
            widened = np.concatenate([ids[:position], [fm.mask_id] * width, ids[position + 1 :]])
            out.append(((t, m, width, position), widened, np.arange(position, position + width)))
    return out


def collect_targets(fm, encoded, pieces, owners, columns, scored, top_k):
    per_mask: dict[tuple[int, int], list] = {}
    for (t, m, width, position), s in zip(owners, scored):
        word_lp = s.target_logprobs.astype(np.float64).sum(axis=0)  # [n_words of this width]
        for ids_, lp in zip(columns[width], word_lp):
            token = ids_[0] if width == 1 else tuple(ids_)
            per_mask.setdefault((t, m), []).append((float(lp), token, encoded[t], position))
    results = []
    for t, ids in enumerate(encoded):
        n_masks = int((ids == fm.mask_id).sum())
        ranked = [sorted(per_mask[(t, m)], key=lambda c: -c[0])[:top_k] for m in range(n_masks)]
        sequences = iter(fm.decode_filled([(ids_, pos, tok) for row in ranked for _, tok, ids_, pos in row]))
        results.append([[fm._prediction(lp, tok, next(sequences)) for lp, tok, _, _ in row] for row in ranked])
    return results


def fill_jointly(fm: FillMask, encoded, batch_size: int) -> list[dict]:
    """Greedy joint fill: put the single most confident prediction in, re-run, until no mask is left."""
    current = [ids.copy() for ids in encoded]
    logprob = np.zeros(len(current))
    while True:
        active = [i for i, ids in enumerate(current) if (ids == fm.mask_id).any()]
        if not active:
            break
        scored = fm.score([current[i] for i in active], top_k=1, batch_size=batch_size)
        for i, s in zip(active, scored):
            best = int(np.argmax(s.topk_logprobs[:, 0]))
            position = np.flatnonzero(current[i] == fm.mask_id)[best]
            current[i][position] = s.topk_ids[best, 0]
            logprob[i] += float(s.topk_logprobs[best, 0])
    sequences = fm.decode_batch(current)
    return [
        {
            "sequence": seq,
            "score": float(np.exp(lp)),
            "tokens": [int(t) for t in ids[orig == fm.mask_id]],
            "token_strs": [fm.token_str(int(t)) for t in ids[orig == fm.mask_id]],
        }
        for seq, lp, ids, orig in zip(sequences, logprob, current, encoded)
    ]
