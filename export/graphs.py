"""Trace the fast and the full fill-mask graphs to ONNX (TorchScript exporter) and fix them up."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from deniro_rt.artifact import FAST_INPUTS, FAST_OUTPUTS
from deniro_rt.errors import DeniroError

from .model import FastFillMask, FullFillMask

log = logging.getLogger(__name__)

FAST_AXES = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "seq"},
    "mask_index": {0: "n"},
    "target_ids": {0: "n", 1: "t"},
    "topk_logprobs": {0: "n", 1: "k"},
    "topk_ids": {0: "n", 1: "k"},
    "target_logprobs": {0: "n", 1: "t"},
}
# Optimum's names for the axes of its masked-LM export
FULL_INPUTS = ("input_ids", "attention_mask")
FULL_AXES = {name: {0: "batch_size", 1: "sequence_length"} for name in (*FULL_INPUTS, "logits")}


def dummy_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second padded: tracing sees a real mask, so none of its handling is folded away."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (2, 8), generator=generator)  # [batch, seq]
    attention_mask = torch.ones(2, 8, dtype=torch.int64)  # [batch, seq]
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


def _export(module: torch.nn.Module, args: tuple, path: Path, names: tuple, axes: dict, opset: int) -> None:
    inputs, outputs = names
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about python ints; bind_top_k covers the one that matters
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_fast(model: torch.nn.Module, path: Path, opset: int) -> None:
    """fast.onnx before optimisation: inputs/outputs exactly as deniro_rt.artifact describes them."""
    input_ids, attention_mask = dummy_batch(model.config.vocab_size)
    mask_index = torch.tensor([1, 10])  # [n] flat b * seq + t
    target_ids = torch.tensor([[1, 2], [3, 4]])  # [n, t]
    top_k = torch.tensor([3])  # [1]
    _export(
        FastFillMask(model),
        (input_ids, attention_mask, mask_index, target_ids, top_k),
        path,
        (FAST_INPUTS, FAST_OUTPUTS),
        FAST_AXES,
        opset,
    )
    proto = onnx.load(str(path))
    bind_top_k(proto)
    onnx.save(proto, str(path))


def export_full(model: torch.nn.Module, path: Path, opset: int) -> None:
    """model.onnx before optimisation: input_ids, attention_mask -> logits [batch, seq, vocab]."""
    _export(
        FullFillMask(model), dummy_batch(model.config.vocab_size), path, (FULL_INPUTS, ("logits",)), FULL_AXES, opset
    )


def bind_top_k(proto: onnx.ModelProto) -> None:
    """Make the TopK node read k straight from the graph input `top_k` (int64 [1], TopK's own K format).

    The tracer records `top_k[0]` as a read of the input today, but an exporter that folds it into a
    constant would silently fix k at the dummy value; rewiring makes k a runtime input regardless.
    """
    graph = proto.graph
    topk = [node for node in graph.node if node.op_type == "TopK"]
    if len(topk) != 1:
        raise DeniroError(f"the traced fast graph has {len(topk)} TopK nodes, expected 1; export bug")
    if "top_k" not in {i.name for i in graph.input}:  # an exporter drops inputs it found unused
        graph.input.append(helper.make_tensor_value_info("top_k", TensorProto.INT64, [1]))
    topk[0].input[1] = "top_k"
    prune_dead_nodes(graph)
    if [i.name for i in graph.input] != list(FAST_INPUTS):
        raise DeniroError(f"fast graph inputs {[i.name for i in graph.input]} != {list(FAST_INPUTS)}; export bug")


def prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers no graph output depends on (nodes are topologically sorted)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
