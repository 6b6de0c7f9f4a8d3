"""--weights int8: 8-bit weight storage for the fp32 graphs, exact by construction (issue 12).

The shipped model must fit in 20 MB, and at 4 bytes a weight the MiniLM is 91 MB. Every weight matrix
(embeddings, attention, FFN, the LM head's transform) is rounded in PyTorch to 8 bits with one scale per
row, *before* tracing: the ONNX graphs then hold exactly the rounded model, and validation compares
like with like. The graph file stores each such matrix as int8 + scales behind a DequantizeLinear,
which ONNX Runtime folds once at load (`session.disable_quant_qdq`, set by deniro_rt for fp32/fp16):
compute stays fp32, the file is ~4x smaller. What rounding costs is a model change, measured against the
unrounded model and written to the manifest (`weight_rounding`).

Exactness: each scale keeps 17 significant bits, so q x scale (|q| <= 127, 7 bits) is exact in fp32 and
the row maximum is exactly 127 x scale. The graph pass recomputes the scales from the rounded values,
checks bit equality, and leaves any matrix that is not on its grid in fp32.

Mixed table (--table-8bit-rows N, issue 23): the word-embedding table's N most frequent pieces keep 8-bit
rows and every other row is rounded to 4 bits (levels -7..7, its own 17-bit scale). On the shipped model,
4-bit rows beyond the 2,000 most frequent pieces cost +0.4 % perplexity where pruning the vocabulary to
20,000 pieces cost 2.4 %, so the whole vocabulary fits in less space than the pruned 8-bit table
(bench/results/cpu-2core-minilm/size-levers/). The graph stores the 8-bit rows behind a DequantizeLinear,
the 4-bit rows two to a byte behind a small unpacking subgraph, and a Gather that puts the rows back in id
order: all constant, so ONNX Runtime folds it to the same fp32 table once at load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

SCALE_BITS = 17  # 24-bit fp32 mantissa - 7 bits of |q| <= 127: q * scale is exact
MIN_ELEMENTS = 1024  # smaller matrices are not worth a DequantizeLinear
# Rounding is a model change, judged like one: by perplexity. Its top-1 against the unrounded model is
# reported, not gated: on the pruned MiniLM 4-5 % of top-1s flip between near-equal candidates while
# perplexity moves 0.1 % (README "The shipped model"). A broken rounding fails both gates by far.
ROUNDING_SCHEME = "int8, one scale per row (17-bit), rounded in PyTorch before tracing"
ROUNDING_THRESHOLDS = {"perplexity_rel_diff": ("<=", 0.01), "top5_overlap": (">=", 0.9)}


INT8_TOP, INT4_TOP = 127, 7  # symmetric levels: -127..127 and -7..7


def grid_scales(abs_max: np.ndarray, top: int = INT8_TOP) -> np.ndarray:
    """Per-row scales, max|row| / top with the mantissa cut to SCALE_BITS; zero rows get scale 1."""
    scale = np.where(abs_max > 0, abs_max, float(top)).astype(np.float32) / np.float32(top)
    mantissa, exponent = np.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    return np.ldexp(np.round(mantissa * 2.0**SCALE_BITS) / 2.0**SCALE_BITS, exponent).astype(np.float32)


def round_rows(weight: np.ndarray, top: int = INT8_TOP) -> np.ndarray:
    """`weight` [rows, cols] rounded to levels -top..top times a per-row grid scale (fp32, exact)."""
    scale = grid_scales(np.abs(weight).max(axis=1), top)[:, None]  # [rows, 1]
    return (np.clip(np.rint(weight / scale), -top, top) * scale).astype(np.float32)


@torch.no_grad()
def round_weights(model: torch.nn.Module, table_8bit: np.ndarray | None = None) -> list[str]:
    """Round every 2-D weight of `model` in place to int8 x per-row scale; returns their names.

    Rows are output features (nn.Linear [out, in]) or tokens/positions (nn.Embedding [n, dim]), so
    in the traced graph a scale is per output column of a MatMul, or per row of a table. With
    `table_8bit` (piece ids), the input-embedding table keeps 8 bits on those rows and 4 on the others.
    """
    table = model.get_input_embeddings().weight if table_8bit is not None else None
    names = []
    for name, param in model.named_parameters():  # a tied table is one parameter: rounded once
        if param.dim() != 2 or param.numel() < MIN_ELEMENTS:
            continue
        weight = param.detach().cpu().numpy()  # [rows, cols]
        rounded = round_rows(weight)
        if param is table:
            rounded = mixed_table(weight, rounded, table_8bit)
        param.copy_(torch.from_numpy(rounded))
        names.append(name)
    return names


def mixed_table(weight: np.ndarray, rounded_8bit: np.ndarray, rows_8bit: np.ndarray) -> np.ndarray:
    """The table with `rows_8bit` rounded to 8 bits and every other row to 4 bits."""
    if len(rows_8bit) and (rows_8bit.min() < 0 or rows_8bit.max() >= len(weight)):
        raise ValueError(f"8-bit table rows must be ids below {len(weight)}")
    mixed = round_rows(weight, INT4_TOP)  # [vocab, dim]
    mixed[rows_8bit] = rounded_8bit[rows_8bit]
    return mixed


def int8_on_grid(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(int8 values, scales, axis) if `weight` [a, b] is exactly int8 x a per-row or per-column scale."""
    for axis in (0, 1):  # 0: a scale per row (tables), 1: per column (MatMul weights [in, out])
        scale = grid_scales(np.abs(weight).max(axis=1 - axis))  # [a] or [b]
        shaped = scale[:, None] if axis == 0 else scale[None, :]
        q = np.rint(weight / shaped)
        if np.abs(q).max() <= 127 and np.array_equal(q.astype(np.float32) * shaped, weight):
            return q.astype(np.int8), scale, axis
    return None


def rows_on_grid(weight: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `weight` [rows, cols]: on the grid of levels -top..top (bool [rows]), its levels, its scale."""
    scale = grid_scales(np.abs(weight).max(axis=1), top)  # [rows]
    q = np.rint(weight / scale[:, None])
    on = (np.abs(q).max(axis=1) <= top) & np.all(q * scale[:, None] == weight, axis=1)
    return on, q, scale


@dataclass(frozen=True)
class MixedRows:
    """A table stored as 8-bit rows and 4-bit rows (two to a byte) plus the order that restores ids."""

    q8: np.ndarray  # int8 [n8, dim]
    scale8: np.ndarray  # fp32 [n8]
    packed4: np.ndarray  # uint8 [n4, dim / 2]: (level + 8) of column j in the low nibble, of j + dim/2 in the high
    scale4: np.ndarray  # fp32 [n4]
    order: np.ndarray  # int32 [vocab]: row i of the table is row order[i] of concat(8-bit rows, 4-bit rows)


def mixed_on_grid(weight: np.ndarray, rows_8bit: np.ndarray) -> MixedRows | None:
    """`weight` as MixedRows if its `rows_8bit` are on the 8-bit grid and every other row is on the 4-bit one."""
    is_8bit = np.zeros(len(weight), dtype=bool)
    is_8bit[rows_8bit] = True
    on4, q4, scale4 = rows_on_grid(weight, INT4_TOP)
    on8, q8, scale8 = rows_on_grid(weight, INT8_TOP)
    if not (np.where(is_8bit, on8, on4).all() and weight.shape[1] % 2 == 0):
        return None
    rows4, rows8 = np.flatnonzero(~is_8bit), np.flatnonzero(is_8bit)
    order = np.empty(len(weight), dtype=np.int32)
    order[rows8], order[rows4] = np.arange(len(rows8)), len(rows8) + np.arange(len(rows4))
    nibbles = (q4[rows4] + 8).astype(np.uint8)  # [n4, dim], 1..15
    half = weight.shape[1] // 2
    packed = nibbles[:, :half] | (nibbles[:, half:] << 4)  # two planes: unpacking is one Concat, no interleave
    return MixedRows(q8[rows8].astype(np.int8), scale8[rows8], packed, scale4[rows4], order)


def mixed_graph(name: str, rows: MixedRows) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initializers and nodes that rebuild table `name` (fp32 [vocab, dim]) from MixedRows; all constant.
    Unpacking works on uint8 (BitShift, then DequantizeLinear with zero point 8): ~0.1 s at load for MiniLM's
    30,522 x 384 table on 2 cores, a third of the time int32 Mod/Div took."""
    p = name + "_mixed/"
    consts = {
        name + "_int8": rows.q8,
        name + "_scale": rows.scale8,
        name + "_int4": rows.packed4,
        name + "_scale4": rows.scale4,
        name + "_order": rows.order,
        p + "zero": np.full(len(rows.packed4), 8, np.uint8),  # per-axis DequantizeLinear: one zero point a row
        p + "4": np.array([4], np.uint8),
    }
    node = lambda op, ins, out, **kw: helper.make_node(op, ins, [p + out], name=p + out, **kw)  # noqa: E731
    nodes = [
        node("DequantizeLinear", [name + "_int8", name + "_scale"], "rows8", axis=0),
        node("BitShift", [name + "_int4", p + "4"], "shifted", direction="LEFT"),  # uint8: drops the high nibble
        node("BitShift", [p + "shifted", p + "4"], "low", direction="RIGHT"),  # columns 0 .. dim/2 - 1
        node("BitShift", [name + "_int4", p + "4"], "high", direction="RIGHT"),  # columns dim/2 .. dim - 1
        node("Concat", [p + "low", p + "high"], "nibbles", axis=1),  # [n4, dim], level + 8
        node("DequantizeLinear", [p + "nibbles", name + "_scale4", p + "zero"], "rows4", axis=0),
        node("Concat", [p + "rows8", p + "rows4"], "rows", axis=0),
        helper.make_node("Gather", [p + "rows", name + "_order"], [name], name=p + "Gather", axis=0),
    ]
    return [numpy_helper.from_array(v, k) for k, v in consts.items()], nodes


def stored_form(
    init: onnx.TensorProto, table_8bit: np.ndarray | None
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]] | None:
    """The initializers and nodes that store fp32 matrix `init` exactly: int8 + DequantizeLinear, or (with
    `table_8bit`, for the table it was rounded with) a mixed 8/4-bit table; None if it is on neither grid."""
    weight = numpy_helper.to_array(init)
    found = int8_on_grid(weight)
    if found is None:
        mixed = None if table_8bit is None else mixed_on_grid(weight, table_8bit)
        return None if mixed is None else mixed_graph(init.name, mixed)
    q, scale, axis = found
    inits = [numpy_helper.from_array(q, init.name + "_int8"), numpy_helper.from_array(scale, init.name + "_scale")]
    node = helper.make_node(
        "DequantizeLinear", [i.name for i in inits], [init.name], name=init.name + "_DequantizeLinear", axis=axis
    )
    return inits, [node]


def store_int8(path: Path, table_8bit: np.ndarray | None = None) -> dict:
    """Rewrite the graph file at `path`: every on-grid fp32 matrix becomes int8 + DequantizeLinear; a table
    rounded by round_weights(..., table_8bit) becomes a mixed 8/4-bit table (its own constant subgraph)."""
    proto = onnx.load(str(path))
    graph = proto.graph
    before = path.stat().st_size
    stored, nodes = [], []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2 or np.prod(init.dims) < MIN_ELEMENTS:
            continue
        form = stored_form(init, table_8bit)
        if form is None:
            log.warning("%s: %s is not on an int8 grid, kept in fp32", path.name, init.name)
            continue
        graph.initializer.remove(init)
        graph.initializer.extend(form[0])
        nodes += form[1]
        stored.append(init.name)
    for node in reversed(nodes):  # first in the graph: their outputs keep the old initializer names
        graph.node.insert(0, node)
    onnx.save(proto, str(path))
    mixed = sum(node.name.endswith("_mixed/Gather") for node in nodes)
    log.info(
        "%s: %d matrices stored as int8 (%d of them a mixed 8/4-bit table), %.2f -> %.2f MB",
        path.name,
        len(stored),
        mixed,
        before / 1e6,
        path.stat().st_size / 1e6,
    )
    after = round(path.stat().st_size / 1e6, 2)
    return {"int8_matrices": len(stored), "mixed_tables": mixed, "mb_fp32": round(before / 1e6, 2), "mb": after}


def rounding_scheme(table_8bit: np.ndarray | None) -> str:
    if table_8bit is None:
        return ROUNDING_SCHEME
    return ROUNDING_SCHEME + f"; word-embedding table: {len(table_8bit)} most frequent pieces 8-bit, the rest 4-bit"


def rounding_cost(model: torch.nn.Module, data, table_8bit: np.ndarray | None = None) -> tuple[list[str], dict]:
    """Round `model` in place (round_weights) and measure what that changed on the validation set:
    the rounded model's top-k and perplexity against the unrounded one's, gated by ROUNDING_THRESHOLDS."""
    from .validate import TOP_K, judged, reference_topk, rel_diff, topk_metrics, torch_reference

    before = torch_reference(model, data)
    names = round_weights(model, table_8bit)
    after = torch_reference(model, data)
    ref_logits, logits = np.concatenate(before.logits), np.concatenate(after.logits)  # [n, vocab]
    metrics = {
        "rows": int(len(logits)),
        **topk_metrics(ref_logits, reference_topk(logits, TOP_K), TOP_K),
        "perplexity": after.perplexity,
        "perplexity_unrounded": before.perplexity,
        "perplexity_rel_diff": rel_diff(after.perplexity, before.perplexity),
    }
    scheme = rounding_scheme(table_8bit)
    return names, {"scheme": scheme, "matrices": len(names), **judged(metrics, ROUNDING_THRESHOLDS)}


def float_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its int8-stored weights back as fp32 initializers (in place; returned), for the
    rewrites that need constant weights: int8 quantization of an artifact's fp32 graph (bench quant,
    export.requantize). A graph without stored weights comes back unchanged."""
    fold_mixed_tables(proto.graph)
    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(name in inits for name in node.input[:2]):
            kept.append(node)
            continue
        q, scale = (numpy_helper.to_array(inits[name]) for name in node.input[:2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shaped = scale[:, None] if axis == 0 else scale[None, :]
        graph.initializer.extend([numpy_helper.from_array(q.astype(np.float32) * shaped, node.output[0])])
        for name in node.input[:2]:
            graph.initializer.remove(inits[name])
    del graph.node[:]
    graph.node.extend(kept)
    return proto


MIXED_PARTS = ("_int8", "_scale", "_int4", "_scale4", "_order")


def mixed_table_value(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    """Table `name` [vocab, dim] fp32, computed from its mixed 8/4-bit initializers as the graph does."""
    q8, scale8, packed4, scale4, order = (numpy_helper.to_array(inits[name + part]) for part in MIXED_PARTS)
    levels = np.concatenate([packed4 & 15, packed4 >> 4], axis=1).astype(np.int32) - 8  # [n4, dim]
    rows = np.concatenate([q8.astype(np.float32) * scale8[:, None], levels.astype(np.float32) * scale4[:, None]])
    return rows[order]


def fold_mixed_tables(graph: onnx.GraphProto) -> None:
    """Replace every mixed-table subgraph (mixed_graph) by its fp32 table as one initializer, in place."""
    tables = [node.output[0] for node in graph.node if node.name.endswith("_mixed/Gather")]
    inits = {init.name: init for init in graph.initializer}
    for name in tables:
        value = mixed_table_value(inits, name)
        prefix = name + "_mixed/"
        drop = {name + part for part in MIXED_PARTS} | {i for i in inits if i.startswith(prefix)}
        for init in [inits.pop(i) for i in drop]:
            graph.initializer.remove(init)
        kept = [node for node in graph.node if not node.name.startswith(prefix)]
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend([numpy_helper.from_array(value, name)])


def mixed_8bit_rows(proto: onnx.ModelProto) -> np.ndarray | None:
    """The ids of a mixed table's 8-bit rows (what round_weights' `table_8bit` was), None without one: how
    bench rounds the PyTorch side as the export did."""
    gathers = [node for node in proto.graph.node if node.name.endswith("_mixed/Gather")]
    if not gathers:
        return None
    inits = {init.name: init for init in proto.graph.initializer}
    name = gathers[0].output[0]
    order, q8 = (numpy_helper.to_array(inits[name + part]) for part in ("_order", "_int8"))
    return np.flatnonzero(order < len(q8))
