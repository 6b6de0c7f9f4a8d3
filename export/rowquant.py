"""int8-row: per-row (per-token) dynamic int8 for the fp32 fast graph, batch-invariant by construction (issue 22).

Every MatMul with a constant [in, out] weight (attention output, FFN lin1/lin2) becomes

    x [.., K] -> s = max|x| over K / 127 (one scale per token row) -> q = round(x / s) int8
      -> MatMulInteger(q, W_int8) int32 -> float * s * w_scale [out]

and, with `attention=True`, the fused Attention's QKV projection too (the Attention op is split into
the same chain plus ORT's MultiHeadAttention, which takes projected Q, K, V and the QKV bias).

Why this keeps batch invariance: a row's scale reads only that row, the int32 dot products are exact
whatever kernel or blocking ORT picks for the batch shape, and the rescale is elementwise. So a text's
numbers are bit-identical alone, in any batch and padded (tests/test_cpu_precision.py checks it).
Why it keeps accuracy: the shipped weights already ARE int8 x a per-column scale (export --weights int8,
export/weights.py), so the weight side is exact; only activations are rounded, each row to its own range.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .weights import float_weights, grid_scales, int8_on_grid

log = logging.getLogger(__name__)

# name -> (QKV inside Attention too, passes): bench quant's candidates and export --int8-method
ROW_METHODS = {"row": (True, 1), "row-ffn": (False, 1), "row2": (True, 2), "row2-ffn": (False, 2)}
MIN_SCALE = np.float32(1e-12)  # an all-zero row (padding after LayerNorm is not zero, but be safe) keeps q = 0


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 [in, out] and a scale per output column; exact when the weight is on its int8 grid already."""
    found = int8_on_grid(weight)
    if found is not None and found[2] == 1:
        return found[0], found[1]
    scale = grid_scales(np.abs(weight).max(axis=0))  # [out]
    return np.clip(np.rint(weight / scale[None, :]), -127, 127).astype(np.int8), scale


class Rewriter:
    """Adds nodes and initializers to one graph under unique names."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph, self.nodes = graph, []
        self.inits = {init.name: init for init in graph.initializer}
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(MIN_SCALE), "rowq_min_scale"),
                numpy_helper.from_array(np.array(127, np.float32), "rowq_127"),
                numpy_helper.from_array(np.array(254, np.float32), "rowq_254"),
                numpy_helper.from_array(np.array(1 / 254, np.float32), "rowq_inv254"),
                numpy_helper.from_array(np.array(128, np.float32), "rowq_128"),
                numpy_helper.from_array(np.array(128, np.uint8), "rowq_zero_point"),
            ]
        )

    def constant(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def add(self, op: str, inputs: list[str], prefix: str, domain: str | None = None, **attrs) -> str:
        out = f"{prefix}_{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def row_matmul(self, x: str, weight: np.ndarray, prefix: str, out: str | None = None, passes: int = 1) -> str:
        """x [.., K] fp32 times a constant weight [K, N] through per-row int8; returns the fp32 output name.

        passes=2 adds the rounding remainder as a second int8 matrix (x ~ s * (q1 + q2 / 254)): about
        16-bit activations for twice the int8 work."""
        q_weight, w_scale = quantize_columns(weight)
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(q_weight, prefix + "_w_int8"),
                numpy_helper.from_array(w_scale, prefix + "_w_scale"),
            ]
        )
        abs_max = self.add("ReduceMax", [self.add("Abs", [x], prefix)], prefix, axes=[-1], keepdims=1)  # [.., 1]
        scale = self.add("Div", [self.add("Max", [abs_max, "rowq_min_scale"], prefix), "rowq_127"], prefix)
        units = self.add("Div", [x, scale], prefix)  # |units| <= 127 by the choice of scale: no Clip needed
        rounded = self.add("Round", [units], prefix)
        acc = self.int8_product(rounded, prefix)
        if passes == 2:
            remainder = self.add("Mul", [self.add("Sub", [units, rounded], prefix), "rowq_254"], prefix)  # |.| <= 127
            low = self.add(
                "Mul", [self.int8_product(self.add("Round", [remainder], prefix), prefix), "rowq_inv254"], prefix
            )
            acc = self.add("Add", [acc, low], prefix)
        scaled = self.add("Mul", [acc, prefix + "_w_scale"], prefix)
        result = self.add("Mul", [scaled, scale], prefix)
        if out is not None:
            self.nodes[-1].output[0] = out
            return out
        return result

    def int8_product(self, rounded: str, prefix: str) -> str:
        """Integer-valued fp32 [.., K] in [-127, 127] times the int8 weight -> fp32 [.., N]. uint8 with zero
        point 128, because MLAS's fast (VNNI) kernels are u8 x s8; the int32 sums are exact, so no kernel
        choice or batch shape can change them."""
        q = self.add("Cast", [self.add("Add", [rounded, "rowq_128"], prefix)], prefix, to=TensorProto.UINT8)
        product = self.add("MatMulInteger", [q, prefix + "_w_int8", "rowq_zero_point"], prefix)
        return self.add("Cast", [product], prefix, to=TensorProto.FLOAT)


def split_attention(rw: Rewriter, node: onnx.NodeProto, prefix: str, passes: int) -> bool:
    """Attention(x, W_qkv, b, mask) -> per-row int8 QKV projection + MultiHeadAttention(Q, K, V, b, mask)."""
    weight = rw.constant(node.input[1])
    heads = next((a.i for a in node.attribute if a.name == "num_heads"), None)
    extra = [a.name for a in node.attribute if a.name not in ("num_heads", "mask_filter_value", "scale")]
    if weight is None or heads is None or extra or len(node.input) != 4 or weight.shape[1] % 3:
        return False
    qkv = rw.row_matmul(node.input[0], weight, prefix, passes=passes)  # [batch, seq, 3 * hidden]
    hidden = weight.shape[1] // 3
    sizes = prefix + "_split_sizes"
    rw.graph.initializer.append(numpy_helper.from_array(np.array([hidden] * 3, np.int64), sizes))
    names = [f"{prefix}_{part}" for part in "qkv"]
    rw.nodes.append(helper.make_node("Split", [qkv, sizes], names, name=prefix + "_Split", axis=-1))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rw.nodes.append(
        helper.make_node(
            "MultiHeadAttention",
            [*names, node.input[2], node.input[3]],
            list(node.output),
            name=prefix + "_MHA",
            domain="com.microsoft",
            **attrs,
        )
    )
    return True


def row_quantize(proto: onnx.ModelProto, attention: bool = True, passes: int = 1) -> dict[str, int]:
    """Rewrite the fp32 fast graph in place (int8-stored weights are folded first); returns what changed."""
    float_weights(proto)
    rw = Rewriter(proto.graph)
    kept, counts = [], {"MatMul": 0, "Attention": 0}
    for i, node in enumerate(proto.graph.node):
        prefix = f"rowq{i}"
        weight = rw.constant(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and weight.ndim == 2:
            rw.row_matmul(node.input[0], weight, prefix, out=node.output[0], passes=passes)
            counts["MatMul"] += 1
        elif node.op_type == "Attention" and attention and split_attention(rw, node, prefix, passes):
            counts["Attention"] += 1
        else:
            kept.append(node)
            continue
        kept.extend(rw.nodes)
        rw.nodes = []
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    drop_unused(proto.graph)
    log.info("int8-row: %s", counts)
    return counts


def drop_unused(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def build_row_int8(src, dst, arch, fused: bool, int8_method: str = "row", **_) -> dict[str, int]:
    """export --precision int8 --int8-method row|row2|...: the fused fp32 graph, rewritten per row."""
    import tempfile
    from pathlib import Path

    from .optimize import build_fp32, op_counts

    attention, passes = ROW_METHODS[int8_method]
    with tempfile.TemporaryDirectory(prefix="deniro-row-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        build_fp32(src, fp32, arch, fused)
        proto = onnx.load(str(fp32))
    row_quantize(proto, attention=attention, passes=passes)
    onnx.save(proto, str(dst))
    return op_counts(proto)


def build_any_graph(
    precision: str, src, dst, arch, fused: bool, per_channel: bool, int8_method: str, calibration=None
) -> dict[str, int]:
    """export.optimize.build_graph, plus the per-row int8 methods (ROW_METHODS) for --precision int8."""
    from .optimize import build_graph

    if precision == "int8" and int8_method in ROW_METHODS:
        counts = build_row_int8(src, dst, arch, fused, int8_method=int8_method)
        log.info("%s built (int8 %s): %s", dst.name, int8_method, counts)
        return counts
    return build_graph(precision, src, dst, arch, fused, per_channel, int8_method, calibration)
