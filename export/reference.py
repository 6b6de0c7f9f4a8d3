"""reference.json: what PyTorch predicts for a fixed set of sentences, kept beside every artifact.

The export's validation compares the graphs with PyTorch once, at export time, and records pass/fail.
This file keeps the raw answers instead: for each of REFERENCE_TEXTS (IMDB-style sentences, one to three
[MASK]s) the top-k token ids and log-probabilities computed by the transformers model the artifact was
exported from, each text run alone (no padding). Anyone can later compare a runtime against it
(tests/test_reference.py does) without the PyTorch weights.

`model_from_graph` rebuilds that transformers model from an artifact's fused fp32 graph (weights stored
as int8 are dequantized exactly), for artifacts whose PyTorch weights are gone: the shipped model's
reference (tests/data/shipped-reference.json) was made that way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deniro_rt.errors import DeniroError

REFERENCE_FILE = "reference.json"
REFERENCE_TOP_K = 10
REFERENCE_TEXTS = (
    "This is a great [MASK]!",
    "I gave it [MASK] out of ten.",
    "The acting was [MASK] and the plot made no sense.",
    "One of the best [MASK] I have ever seen.",
    "The [MASK] was so boring that I fell asleep halfway through.",
    "Her performance in the lead role is simply [MASK].",
    "I would not recommend this film to [MASK].",
    "The special effects look cheap, but the [MASK] is wonderful.",
    "It is a [MASK] movie with a [MASK] ending.",
    "The director clearly loves the [MASK] genre.",
    "Do not waste your [MASK] on this one.",
    "The soundtrack fits every [MASK] perfectly.",
    "My kids loved it and so did [MASK].",
    "A [MASK] story about a family in a small town.",
    "The first half is slow, but the [MASK] half is brilliant.",
    "He plays a detective who is trying to solve a [MASK].",
    "This was the worst [MASK] of the year.",
    "The dialogue is [MASK], the characters are [MASK], and the jokes fall flat.",
    "I saw this movie in the [MASK] when it came out.",
    "The [MASK] between the two leads is believable.",
    "It won an [MASK] for best picture.",
    "The book was much [MASK] than the movie.",
    "If you like horror films, you will [MASK] this one.",
    "The camera work and the [MASK] are beautiful.",
    "After ten minutes I wanted my [MASK] back.",
    "The cast includes some very [MASK] actors.",
    "This [MASK] deserves a wider audience.",
    "The ending left me [MASK] for days.",
    "It is based on a true [MASK].",
    "The villain is [MASK] and the hero is [MASK].",
    "Watch it with [MASK] on a rainy [MASK].",
    "The sequel is not as good as the [MASK].",
    "I laughed so hard I [MASK].",
    "The [MASK] [MASK] of this film is its script.",
    "A [MASK] cast, a [MASK] script and a [MASK] director.",
    "Overall, I would rate this [MASK] a seven.",
)


def reference(model, tokenizer, texts: tuple[str, ...] = REFERENCE_TEXTS, top_k: int = REFERENCE_TOP_K) -> dict:
    """Per text, per [MASK] (in order): the top-k ids and float32 log-probs of `model` (a transformers
    MLM), each text tokenized by `tokenizer` and run alone."""
    import torch

    masks = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_token_id]
            if not positions:
                raise DeniroError(f"reference text has no mask token: {text!r}")
            logits = model(input_ids=torch.tensor([ids])).logits[0, positions].float()  # [n_masks, vocab]
            logprobs, top = torch.log_softmax(logits, dim=-1).topk(top_k, dim=-1)  # [n_masks, k] each
            masks.append([{"ids": t.tolist(), "logprobs": lp.tolist()} for t, lp in zip(top, logprobs)])
    return {"top_k": top_k, "texts": list(texts), "masks": masks}


def reference_record(model, tokenizer, about: str) -> dict:
    """reference.json's content, with `about` saying where its numbers come from."""
    import torch
    import transformers

    return {
        "about": about,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        **reference(model, tokenizer),
    }


def write_reference(model, tokenizer, folder: Path, about: str) -> Path:
    path = Path(folder) / REFERENCE_FILE
    path.write_text(json.dumps(reference_record(model, tokenizer, about), indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- the model, from its graph
# The fused fp32 graph, in node order: the embeddings, then per layer these ops, then the LM head.
LAYER_OPS = ("Attention", "MatMul", "SkipLayerNormalization", "MatMul", "BiasGelu", "MatMul", "SkipLayerNormalization")
HEAD_OPS = ("Gemm", "LayerNormalization", "Gemm")
WEIGHTED_OPS = {"EmbedLayerNormalization", *LAYER_OPS, *HEAD_OPS}


def weighted_nodes(proto) -> tuple[list, dict[str, np.ndarray]]:
    """The nodes that hold weights, in graph order, and every initializer as an fp32 array."""
    from onnx import numpy_helper

    from .weights import float_weights

    graph = float_weights(proto).graph  # int8-stored matrices back as the exact fp32 values
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in WEIGHTED_OPS and (n.op_type != "MatMul" or n.input[1] in inits)]
    return nodes, inits


def layer_weights(nodes: list, inits: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """One transformer block's DistilBERT parameters from its seven fused nodes."""
    attention, out, sa_norm, lin1, gelu, lin2, out_norm = nodes
    qkv, qkv_bias = inits[attention.input[1]], inits[attention.input[2]]  # [H, 3H], [3H]: q | k | v
    hidden = qkv.shape[0]
    found = {}
    for i, name in enumerate(("q_lin", "k_lin", "v_lin")):
        found[f"attention.{name}.weight"] = qkv[:, i * hidden : (i + 1) * hidden].T  # torch Linear: [out, in]
        found[f"attention.{name}.bias"] = qkv_bias[i * hidden : (i + 1) * hidden]
    found["attention.out_lin.weight"], found["attention.out_lin.bias"] = inits[out.input[1]].T, inits[sa_norm.input[4]]
    found["sa_layer_norm.weight"], found["sa_layer_norm.bias"] = inits[sa_norm.input[2]], inits[sa_norm.input[3]]
    found["ffn.lin1.weight"], found["ffn.lin1.bias"] = inits[lin1.input[1]].T, inits[gelu.input[1]]
    found["ffn.lin2.weight"], found["ffn.lin2.bias"] = inits[lin2.input[1]].T, inits[out_norm.input[4]]
    found["output_layer_norm.weight"] = inits[out_norm.input[2]]
    found["output_layer_norm.bias"] = inits[out_norm.input[3]]
    return {f"{prefix}.{name}": value for name, value in found.items()}


def graph_state_dict(proto, n_layers: int) -> dict[str, np.ndarray]:
    """DistilBertForMaskedLM's state dict, read off a fused fast graph (export's layout, checked)."""
    nodes, inits = weighted_nodes(proto)
    expected = ("EmbedLayerNormalization", *LAYER_OPS * n_layers, *HEAD_OPS)
    if tuple(n.op_type for n in nodes) != expected:
        raise DeniroError(
            f"the graph is not a fused DistilBERT of {n_layers} layers (weighted ops: "
            f"{[n.op_type for n in nodes]}); rebuild needs an export with fusion on"
        )
    embed, transform, norm, projector = nodes[0], nodes[-3], nodes[-2], nodes[-1]
    state = {
        "distilbert.embeddings.word_embeddings.weight": inits[embed.input[2]],
        "distilbert.embeddings.position_embeddings.weight": inits[embed.input[3]],
        "distilbert.embeddings.LayerNorm.weight": inits[embed.input[5]],
        "distilbert.embeddings.LayerNorm.bias": inits[embed.input[6]],
        "vocab_transform.weight": inits[transform.input[1]],
        "vocab_transform.bias": inits[transform.input[2]],
        "vocab_layer_norm.weight": inits[norm.input[1]],
        "vocab_layer_norm.bias": inits[norm.input[2]],
        "vocab_projector.weight": inits[projector.input[1]],
        "vocab_projector.bias": inits[projector.input[2]],
    }
    for layer in range(n_layers):
        block = nodes[1 + layer * len(LAYER_OPS) : 1 + (layer + 1) * len(LAYER_OPS)]
        state.update(layer_weights(block, inits, f"distilbert.transformer.layer.{layer}"))
    return state


def model_from_graph(folder: Path, graph: str = "fast.onnx"):
    """The transformers DistilBertForMaskedLM whose weights the artifact's fused fp32 graph holds."""
    import onnx
    import torch
    from transformers import AutoConfig, DistilBertForMaskedLM

    config = AutoConfig.from_pretrained(folder)
    if config.model_type != "distilbert":
        raise DeniroError(f"{folder} holds a {config.model_type} model; the graph layout is DistilBERT's only")
    model = DistilBertForMaskedLM(config).eval()
    state = graph_state_dict(onnx.load(str(Path(folder) / graph)), config.n_layers)
    model.load_state_dict({name: torch.from_numpy(np.array(v, np.float32)) for name, v in state.items()}, strict=True)
    return model
