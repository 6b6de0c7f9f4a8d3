"""ONNX Runtime transformer fusions, fp16 conversion and int8 quantization of the traced graphs."""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deniro_rt.errors import DeniroError

from .config import DEFAULT_INT8_METHOD, INT8_METHODS, Int8Method

log = logging.getLogger(__name__)

# Besides the com.microsoft (fused / quantized) ops, these standard ops are worth counting.
REPORTED_OPS = {"LayerNormalization", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"}
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
# Run on n mask rows only, so fp32 costs nothing there; fp16 log-probs over the whole vocabulary
# would lose the precision perplexity needs. (TopK is already in onnxruntime's default block list.)
FP16_KEEP_FP32 = ("LogSoftmax", "GatherElements")


@dataclass(frozen=True)
class Arch:
    """What the fusions need to know about the model (DistilBERT config names)."""

    n_heads: int
    hidden: int
    n_layers: int

    @classmethod
    def of(cls, config) -> Arch:
        return cls(n_heads=config.n_heads, hidden=config.dim, n_layers=config.n_layers)


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type among the fused / quantized ops (com.microsoft domain) and REPORTED_OPS."""
    counts = Counter(n.op_type for n in proto.graph.node if n.domain == "com.microsoft" or n.op_type in REPORTED_OPS)
    return dict(sorted(counts.items()))


def fusion_options():
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    # The raw 2-D mask: BERT's default 1-D "mask index" assumes right padding, the contract does not.
    options.use_raw_attention_mask(True)
    return options


def fuse(src: Path, arch: Arch, *, use_gpu: bool = False):
    """onnxruntime.transformers' BERT fusions: Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=0: python fusions only; onnxruntime's own rewrites would tie the file to one provider.
    return optimize_model(
        str(src),
        model_type="bert",
        num_heads=arch.n_heads,
        hidden_size=arch.hidden,
        optimization_options=fusion_options(),
        opt_level=0,
        use_gpu=use_gpu,
    )


def unfused(src: Path):
    from onnxruntime.transformers.onnx_model import OnnxModel

    return OnnxModel(onnx.load(str(src)))


def require_attention(counts: dict[str, int], arch: Arch, label: str) -> None:
    found = sum(counts.get(op, 0) for op in ATTENTION_OPS)
    if found != arch.n_layers:
        raise DeniroError(
            f"{label}: onnxruntime fused {found} of {arch.n_layers} attention layers (ops: "
            f"{counts}); try the other --attn-implementation (sdpa or eager), or pass --no-fuse to accept "
            f"unfused graphs"
        )


def _optimized(src: Path, arch: Arch, fused: bool, label: str, **kwargs):
    if not fused:
        return unfused(src)
    model = fuse(src, arch, **kwargs)
    require_attention(op_counts(model.model), arch, label)
    return model


def build_fp32(src: Path, dst: Path, arch: Arch, fused: bool, **_) -> dict[str, int]:
    model = _optimized(src, arch, fused, dst.name)
    model.save_model_to_file(str(dst))
    return op_counts(model.model)


def build_fp16(src: Path, dst: Path, arch: Arch, fused: bool, **_) -> dict[str, int]:
    """fp16 weights and compute for CUDA; fp32 inputs/outputs (keep_io_types) and fp32 tail."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    model = _optimized(src, arch, fused, dst.name, use_gpu=True)
    # LayerNorm / SkipLayerNorm / Attention's softmax accumulate in fp32 inside onnxruntime's fp16
    # kernels, so only the vocabulary-wide tail needs blocking.
    model.convert_float_to_float16(keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32])
    model.save_model_to_file(str(dst))
    return op_counts(model.model)


def build_int8(
    src: Path,
    dst: Path,
    arch: Arch,
    fused: bool,
    per_channel: bool = True,
    int8_method: str = DEFAULT_INT8_METHOD,
    calibration: list[dict] | None = None,
    **_,
) -> dict[str, int]:
    """int8 fast graph for CPU by `int8_method` (INT8_METHODS); static needs `calibration` feeds."""
    model = _optimized(src, arch, fused, dst.name)
    return quantize_fused(model.model, dst, INT8_METHODS[int8_method], calibration, per_channel)


def quantize_fused(
    proto: onnx.ModelProto,
    dst: Path,
    method: Int8Method,
    calibration: list[dict] | None = None,
    per_channel: bool = True,
) -> dict[str, int]:
    """Quantize an optimized fp32 fast graph (e.g. an artifact's fast.onnx) into `dst`; returns its op counts.

    Attention is first split into a QKV MatMul + MultiHeadAttention: the int8 kernels handle MatMul
    only, and the QKV projection is a quarter of the encoder's multiply-adds. The LM head (everything
    downstream of mask_index) stays fp32: its error would land straight on the log-probs.
    """
    proto = attention_to_mha(_copy(proto))
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):  # the optimizer adds it on save only
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    head = sorted(downstream_nodes(proto.graph, "mask_index"))
    if method.kind == "nbits":
        quantize_nbits(proto, dst, method, head)
    elif method.kind == "dynamic":
        quantize_dynamic_matmuls(proto, dst, head, per_channel)
    elif method.kind == "static":
        if not calibration:
            raise DeniroError(
                "static int8 quantization needs calibration sentences (a --dataset with text); "
                "pass --int8-method nbits to quantize without data"
            )
        quantize_static_qdq(proto, dst, method, head, calibration, per_channel)
    else:
        raise DeniroError(f"unknown int8 method kind {method.kind!r}")
    return op_counts(onnx.load(str(dst)))


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(proto)
    return copied


def attention_to_mha(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each fused Attention(x, W[H, 3H], b, mask) as MatMul(x, W) -> Split -> MultiHeadAttention.

    The same computation (outputs equal to fp32 rounding), with the projection exposed as a MatMul.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "Attention" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        x, weight, bias, mask = node.input[:4]
        hidden = numpy_helper.to_array(weights[weight]).shape[1] // 3
        split = helper.make_tensor(f"{node.name}_split", onnx.TensorProto.INT64, [3], [hidden] * 3)
        graph.initializer.append(split)
        qkv, q, k, v = (f"{node.name}_{part}" for part in ("qkv", "q", "k", "v"))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mha_attrs = {name: attrs[name] for name in ("num_heads", "mask_filter_value", "scale") if name in attrs}
        nodes += [
            helper.make_node("MatMul", [x, weight], [qkv], name=f"{node.name}_QKV_MatMul"),
            helper.make_node("Split", [qkv, split.name], [q, k, v], name=f"{node.name}_Split", axis=-1),
            helper.make_node(
                "MultiHeadAttention",
                [q, k, v, bias, mask],
                list(node.output),
                name=f"{node.name}_MHA",
                domain="com.microsoft",
                **mha_attrs,
            ),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def quantize_nbits(proto: onnx.ModelProto, dst: Path, method: Int8Method, head: list[str]) -> None:
    """MatMulNBits, 8-bit symmetric blockwise weights; accuracy_level 4 quantizes activations per row."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        proto,
        bits=8,
        block_size=method.block_size,
        is_symmetric=True,
        accuracy_level=method.accuracy_level,
        nodes_to_exclude=head,
        op_types_to_quantize=("MatMul",),
    )
    with quantizer_logs_muted():
        quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantize_static_qdq(
    proto: onnx.ModelProto, dst: Path, method: Int8Method, head: list[str], calibration: list[dict], per_channel: bool
) -> None:
    """QDQ int8 MatMuls with activation scales fixed by calibration (uint8 activations, int8 weights).

    MatMul outputs stay fp32 (no requantization: ONNX Runtime fuses DQ -> MatMul into
    MatMulIntegerToFloat), which is both faster and closer to fp32 than requantized outputs.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # The calibrator only observes tensors whose type it knows; onnx cannot type com.microsoft outputs.
    typed = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    staged = dst.with_name(dst.stem + ".fp32.onnx")
    onnx.save(typed, str(staged))
    try:
        with quantizer_logs_muted():
            quantize_static(
                str(staged),
                str(dst),
                FeedReader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=head,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method.calibration),
                extra_options={
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                    "OpTypesToExcludeOutputQuantization": ["MatMul"],
                },
            )
    finally:
        staged.unlink(missing_ok=True)


def quantize_dynamic_matmuls(proto: onnx.ModelProto, dst: Path, head: list[str], per_channel: bool) -> None:
    """Dynamic int8 MatMuls (DynamicQuantizeMatMul: one activation scale per call and tensor) of a fused graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staged = dst.with_name(dst.stem + ".fp32.onnx")
    with hidden_from_quantizer(proto, set(head)):  # it would rewrite the head's Gemm whatever nodes_to_exclude says
        onnx.save(proto, str(staged))
    try:
        with quantizer_logs_muted():
            quantize_dynamic(
                str(staged),
                str(dst),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=head,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        staged.unlink(missing_ok=True)
    quantized = onnx.load(str(dst))
    restore_hidden(quantized)
    onnx.save(quantized, str(dst))


class FeedReader:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def calibration_feeds(
    rows: list[np.ndarray], mask_id: int, pad_id: int, seq_len: int, batch_size: int = 16
) -> list[dict]:
    """Fast-graph feeds for calibration: token rows padded to one [batch_size, seq_len] shape.

    One shape for every batch: the histogram calibrators (Percentile, Entropy) stack batches.
    """
    rows = [r[:seq_len] for r in rows]
    batch_size = max(1, min(batch_size, len(rows)))
    feeds = []
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        ids = np.full((batch_size, seq_len), pad_id, np.int64)  # [batch, seq]
        attention = np.zeros((batch_size, seq_len), np.int64)  # [batch, seq]
        for b, row in enumerate(rows[start : start + batch_size]):
            ids[b, : len(row)], attention[b, : len(row)] = row, 1
        masks = np.flatnonzero(ids.ravel() == mask_id).astype(np.int64)  # [n]
        feeds.append(
            {
                "input_ids": ids,
                "attention_mask": attention,
                "mask_index": masks,
                "target_ids": np.zeros((len(masks), 1), np.int64),
                "top_k": np.array([1], np.int64),
            }
        )
    return feeds


@contextmanager
def quantizer_logs_muted():
    """onnxruntime.quantization logs every node at INFO on the root logger and its own loggers."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, logging.WARNING))
    try:  # the histogram calibrators print() their settings and progress
        with (
            muted_root_warning(PRE_PROCESS_HINT),
            muted_root_warning(STATIC_PRE_PROCESS_HINT),
            redirect_stdout(io.StringIO()),
        ):
            yield
    finally:
        root.setLevel(previous)


# quantize_dynamic's hint to run its shape inference / optimizer first: the graph is optimized already.
PRE_PROCESS_HINT = "Please consider to run pre-processing before quantization"
STATIC_PRE_PROCESS_HINT = "Please consider pre-processing before quantization"  # quantize_static's wording


@contextmanager
def muted_root_warning(prefix: str):
    """Drop root-logger records starting with `prefix` (onnxruntime.quantization logs to the root)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


# A private op no tool knows (the quantizer matches Gemm by op type alone, whatever the domain).
HIDDEN_DOMAIN, HIDDEN_GEMM = "deniro.export.hidden", "HiddenGemm"


@contextmanager
def hidden_from_quantizer(proto: onnx.ModelProto, names: set[str]):
    """Temporarily turn the Gemm nodes in `names` into HIDDEN_GEMM (restore_hidden turns them back)."""
    for node in proto.graph.node:
        if node.name in names and node.op_type == "Gemm":
            node.op_type, node.domain = HIDDEN_GEMM, HIDDEN_DOMAIN
    proto.opset_import.append(onnx.helper.make_opsetid(HIDDEN_DOMAIN, 1))
    try:
        yield
    finally:
        restore_hidden(proto)


def restore_hidden(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        if node.domain == HIDDEN_DOMAIN:
            node.op_type, node.domain = "Gemm", ""
    kept = [o for o in proto.opset_import if o.domain != HIDDEN_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def downstream_nodes(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """Names of the nodes that depend on `tensor` (nodes are topologically sorted)."""
    reached, names = {tensor}, set()
    for node in graph.node:
        if reached.intersection(node.input):
            reached.update(node.output)
            names.add(node.name)
    return names


BUILDERS = {"fp32": build_fp32, "fp16": build_fp16, "int8": build_int8}


def build_graph(
    precision: str,
    src: Path,
    dst: Path,
    arch: Arch,
    fused: bool,
    per_channel: bool,
    int8_method: str = DEFAULT_INT8_METHOD,
    calibration: list[dict] | None = None,
) -> dict[str, int]:
    """Write the `precision` graph built from the traced fp32 graph `src`; returns its op counts.

    int8_method, calibration: see build_int8 (ignored by the other precisions).
    """
    started = time.perf_counter()
    counts = BUILDERS[precision](
        src, dst, arch, fused, per_channel=per_channel, int8_method=int8_method, calibration=calibration
    )
    log.info(
        "%s built in %.1f s: %s",
        dst.name,
        time.perf_counter() - started,
        ", ".join(f"{op} {n}" for op, n in counts.items()) or "no fused ops",
    )
    return counts
