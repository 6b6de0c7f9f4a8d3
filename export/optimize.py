"""ONNX Runtime transformer fusions, fp16 conversion and int8 dynamic quantization of the traced graphs."""
from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from deniro_rt.errors import DeniroError

log = logging.getLogger(__name__)

# Besides the com.microsoft (fused / quantized) ops, these standard ops are worth counting.
REPORTED_OPS = {"LayerNormalization", "MatMulInteger", "DynamicQuantizeLinear"}
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
# Run on n mask rows only, so fp32 costs nothing there; fp16 log-probs over the whole vocabulary
# would lose the precision perplexity needs. (TopK is already in onnxruntime's default block list.)
FP16_KEEP_FP32 = ("LogSoftmax", "GatherElements")
INT8_OPS = ("MatMul", "Attention")


@dataclass(frozen=True)
class Arch:
    """What the fusions need to know about the model (DistilBERT config names)."""

    n_heads: int
    hidden: int
    n_layers: int

    @classmethod
    def of(cls, config) -> "Arch":
        return cls(n_heads=config.n_heads, hidden=config.dim, n_layers=config.n_layers)


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type among the fused / quantized ops (com.microsoft domain) and REPORTED_OPS."""
    counts = Counter(n.op_type for n in proto.graph.node
                     if n.domain == "com.microsoft" or n.op_type in REPORTED_OPS)
    return dict(sorted(counts.items()))


def fusion_options(embed_layer_norm: bool = True):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = embed_layer_norm
    # The raw 2-D mask: BERT's default 1-D "mask index" assumes right padding, the contract does not.
    options.use_raw_attention_mask(True)
    return options


def fuse(src: Path, arch: Arch, *, embed_layer_norm: bool = True, use_gpu: bool = False):
    """onnxruntime.transformers' BERT fusions: Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=0: python fusions only; onnxruntime's own rewrites would tie the file to one provider.
    return optimize_model(str(src), model_type="bert", num_heads=arch.n_heads, hidden_size=arch.hidden,
                          optimization_options=fusion_options(embed_layer_norm), opt_level=0, use_gpu=use_gpu)


def unfused(src: Path):
    from onnxruntime.transformers.onnx_model import OnnxModel

    return OnnxModel(onnx.load(str(src)))


def require_attention(counts: dict[str, int], arch: Arch, label: str) -> None:
    found = sum(counts.get(op, 0) for op in ATTENTION_OPS)
    if found != arch.n_layers:
        raise DeniroError(f"{label}: onnxruntime fused {found} of {arch.n_layers} attention layers (ops: "
                          f"{counts}); try the other --attn-implementation (sdpa or eager), or pass --no-fuse to accept "
                          f"unfused graphs")


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


def build_int8(src: Path, dst: Path, arch: Arch, fused: bool, per_channel: bool = True, **_) -> dict[str, int]:
    """Dynamic int8 quantization (weights int8, activations quantized at run time) of the encoder, for CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # EmbedLayerNormalization does not survive quantization: fuse everything else first.
    model = _optimized(src, arch, fused, dst.name, embed_layer_norm=False)
    # The LM head stays fp32: it runs on the mask rows only (little time to win) and its error lands
    # straight on the log-probs. It is hidden from the quantizer, which would otherwise rewrite its
    # Gemm into a MatMul on a transposed copy of the (tied, vocabulary-sized) embedding matrix.
    head = downstream_nodes(model.model.graph, "mask_index")
    staged = dst.with_name(dst.stem + ".fp32.onnx")
    with hidden_from_quantizer(model.model, head):
        model.save_model_to_file(str(staged))
    # onnx shape inference cannot type the outputs of fused (com.microsoft) ops; they are all float.
    with muted_root_warning(PRE_PROCESS_HINT):
        quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=list(INT8_OPS), nodes_to_exclude=sorted(head),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    staged.unlink()
    quantized = onnx.load(str(dst))
    restore_hidden(quantized)
    onnx.save(quantized, str(dst))
    return op_counts(quantized)


# quantize_dynamic's hint to run its shape inference / optimizer first: the graph is optimized already.
PRE_PROCESS_HINT = "Please consider to run pre-processing before quantization"


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


def build_graph(precision: str, src: Path, dst: Path, arch: Arch, fused: bool, per_channel: bool) -> dict[str, int]:
    """Write the `precision` graph built from the traced fp32 graph `src`; returns its op counts."""
    started = time.perf_counter()
    counts = BUILDERS[precision](src, dst, arch, fused, per_channel=per_channel)
    log.info("%s built in %.1f s: %s", dst.name, time.perf_counter() - started,
             ", ".join(f"{op} {n}" for op, n in counts.items()) or "no fused ops")
    return counts
