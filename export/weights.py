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
"""

from __future__ import annotations

import logging
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


def grid_scales(abs_max: np.ndarray) -> np.ndarray:
    """Per-row scales, max|row| / 127 with the mantissa cut to SCALE_BITS; zero rows get scale 1."""
    scale = np.where(abs_max > 0, abs_max, 127.0).astype(np.float32) / np.float32(127.0)
    mantissa, exponent = np.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    return np.ldexp(np.round(mantissa * 2.0**SCALE_BITS) / 2.0**SCALE_BITS, exponent).astype(np.float32)


@torch.no_grad()
def round_weights(model: torch.nn.Module) -> list[str]:
    """Round every 2-D weight of `model` in place to int8 x per-row scale; returns their names.

    Rows are output features (nn.Linear [out, in]) or tokens/positions (nn.Embedding [n, dim]), so
    in the traced graph a scale is per output column of a MatMul, or per row of a table.
    """
    names = []
    for name, param in model.named_parameters():  # a tied table is one parameter: rounded once
        if param.dim() != 2 or param.numel() < MIN_ELEMENTS:
            continue
        weight = param.detach().cpu().numpy()  # [rows, cols]
        scale = grid_scales(np.abs(weight).max(axis=1))[:, None]  # [rows, 1]
        q = np.clip(np.rint(weight / scale), -127, 127)
        param.copy_(torch.from_numpy((q * scale).astype(np.float32)))
        names.append(name)
    return names


def int8_on_grid(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(int8 values, scales, axis) if `weight` [a, b] is exactly int8 x a per-row or per-column scale."""
    for axis in (0, 1):  # 0: a scale per row (tables), 1: per column (MatMul weights [in, out])
        scale = grid_scales(np.abs(weight).max(axis=1 - axis))  # [a] or [b]
        shaped = scale[:, None] if axis == 0 else scale[None, :]
        q = np.rint(weight / shaped)
        if np.abs(q).max() <= 127 and np.array_equal(q.astype(np.float32) * shaped, weight):
            return q.astype(np.int8), scale, axis
    return None


def store_int8(path: Path) -> dict:
    """Rewrite the graph file at `path`: every on-grid fp32 matrix becomes int8 + DequantizeLinear."""
    proto = onnx.load(str(path))
    graph = proto.graph
    before = path.stat().st_size
    stored, dequantize = [], []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2 or np.prod(init.dims) < MIN_ELEMENTS:
            continue
        found = int8_on_grid(numpy_helper.to_array(init))
        if found is None:
            log.warning("%s: %s is not on an int8 grid, kept in fp32", path.name, init.name)
            continue
        q, scale, axis = found
        graph.initializer.remove(init)
        graph.initializer.extend(
            [numpy_helper.from_array(q, init.name + "_int8"), numpy_helper.from_array(scale, init.name + "_scale")]
        )
        dequantize.append(
            helper.make_node(
                "DequantizeLinear",
                [init.name + "_int8", init.name + "_scale"],
                [init.name],
                name=init.name + "_DequantizeLinear",
                axis=axis,
            )
        )
        stored.append(init.name)
    for node in reversed(dequantize):  # first in the graph: their outputs keep the old initializer names
        graph.node.insert(0, node)
    onnx.save(proto, str(path))
    log.info(
        "%s: %d matrices stored as int8, %.2f -> %.2f MB",
        path.name,
        len(stored),
        before / 1e6,
        path.stat().st_size / 1e6,
    )
    return {"int8_matrices": len(stored), "mb_fp32": round(before / 1e6, 2), "mb": round(path.stat().st_size / 1e6, 2)}


def rounding_cost(model: torch.nn.Module, data) -> tuple[list[str], dict]:
    """Round `model` in place (round_weights) and measure what that changed on the validation set:
    the rounded model's top-k and perplexity against the unrounded one's, gated by ROUNDING_THRESHOLDS."""
    from .validate import TOP_K, judged, reference_topk, rel_diff, topk_metrics, torch_reference

    before = torch_reference(model, data)
    names = round_weights(model)
    after = torch_reference(model, data)
    ref_logits, logits = np.concatenate(before.logits), np.concatenate(after.logits)  # [n, vocab]
    metrics = {
        "rows": int(len(logits)),
        **topk_metrics(ref_logits, reference_topk(logits, TOP_K), TOP_K),
        "perplexity": after.perplexity,
        "perplexity_unrounded": before.perplexity,
        "perplexity_rel_diff": rel_diff(after.perplexity, before.perplexity),
    }
    return names, {"scheme": ROUNDING_SCHEME, "matrices": len(names), **judged(metrics, ROUNDING_THRESHOLDS)}


def float_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its int8-stored weights back as fp32 initializers (in place; returned), for the
    rewrites that need constant weights: int8 quantization of an artifact's fp32 graph (bench quant,
    export.requantize). A graph without stored weights comes back unchanged."""
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
