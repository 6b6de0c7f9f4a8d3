"""Can exports/minilm/fast.onnx (91 MB) shrink to <= 20 MB? Size, agreement with fp32, B=1 latency.

Run from the repo root:
  .venv/bin/python experiments/size_experiment.py inventory
  .venv/bin/python experiments/size_experiment.py build      # graphs -> /tmp/size-exp
  .venv/bin/python experiments/size_experiment.py score      # 256 IMDB test sentences
  flock /tmp/deniro-bench.lock .venv/bin/python experiments/size_experiment.py time
Results: bench/results/cpu-2core-minilm/size/size.json (one key per step).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SRC = ROOT / "exports/minilm"
OUT = Path("/tmp/size-exp")
WANTED = set(sys.argv[2:])  # variant names (default: all)
SENTENCES = int(os.environ.get("SENTENCES", 256))  # score: masked test sentences (key "score_<n>" if not 256)
FOLD_DQ = bool(os.environ.get("FOLD_DQ"))  # time: session.disable_quant_qdq=1 (key "time_fold_dq")
RESULTS = ROOT / "bench/results/cpu-2core-minilm/size/size.json"
TABLE = "mlm.model.distilbert.embeddings.word_embeddings.weight"
PROJECTOR = "/vocab_projector/Gemm"


def save_results(key: str, value) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = {**data.get(key, {}), **value} if key != "inventory" else value
    RESULTS.write_text(json.dumps(data, indent=1))


# --------------------------------------------------------------------------- 1. where the bytes go
def inventory() -> dict:
    proto = onnx.load(str(SRC / "fast.onnx"))
    rows = initializer_rows(proto)
    groups = Counter()
    for r in rows:
        groups[weight_group(r)] += r["mb"]
    return {
        "file_mb": (SRC / "fast.onnx").stat().st_size / 1e6,
        "initializers_mb": sum(r["mb"] for r in rows),
        "count": len(rows),
        "groups": dict(groups.most_common()),
        "top": rows[:22],
    }


def initializer_rows(proto) -> list[dict]:
    """One row per initializer (name, shape, dtype, MB, the nodes that read it), largest first."""
    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(f"{node.op_type} {node.name}")
    rows = []
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        rows.append(
            {
                "name": init.name,
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "mb": arr.nbytes / 1e6,
                "consumers": consumers.get(init.name, []),
            }
        )
    rows.sort(key=lambda r: -r["mb"])
    return rows


def weight_group(row: dict) -> str:
    """Which part of the model an initializer row belongs to, from its name and its consumers."""
    c = " ".join(row["consumers"])
    return (
        "word embedding table (tied)"
        if row["name"] == TABLE
        else "attention QKV"
        if "Attention" in c
        else "FFN lin1/lin2"
        if "ffn" in c
        else "attention out_lin"
        if "out_lin" in c
        else "position embeddings"
        if "position" in row["name"]
        else "vocab_transform"
        if "vocab_transform" in c
        else "other (biases, LayerNorm, constants)"
    )


# --------------------------------------------------------------------------- graph surgery
def head_nodes(proto) -> list[str]:
    from export.optimize import downstream_nodes

    return sorted(downstream_nodes(proto.graph, "mask_index"))


def quantize_encoder(
    proto,
    bits: int,
    block: int,
    accuracy_level: int,
    exclude: list[str],
    sym: bool = True,
    algo: str = "rtn",
    only: tuple[str, ...] | None = None,
):
    """MatMuls with a constant weight (Attention split into QKV MatMul + MHA) -> MatMulNBits.

    only: quantize just the MatMuls whose name contains one of these substrings (others untouched)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from export.optimize import quantizer_logs_muted

    exclude = list(exclude)
    if only:
        exclude += [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(o in n.name for o in only)]
    config = (
        HQQWeightOnlyQuantConfig(block_size=block, bits=bits, op_types_to_quantize=("MatMul",))
        if algo == "hqq"
        else None
    )
    q = MatMulNBitsQuantizer(
        proto,
        bits=bits,
        block_size=block,
        is_symmetric=sym,
        accuracy_level=accuracy_level,
        nodes_to_exclude=exclude,
        op_types_to_quantize=("MatMul",),
        algo_config=config,
    )
    with quantizer_logs_muted():
        q.process()
    return q.model.model


def projector_to_matmul(proto) -> None:
    """Gemm(x, table, b, transB=1) -> MatMul(x, table^T copy) + Add(b): a MatMul the quantizer can take."""
    g = proto.graph
    table = numpy_helper.to_array(next(i for i in g.initializer if i.name == TABLE))
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), "projector_weight_T"))
    nodes = []
    for node in g.node:
        if node.name != PROJECTOR:
            nodes.append(node)
            continue
        x, _, bias = node.input
        mm = node.output[0] + "_mm"
        nodes += [
            helper.make_node("MatMul", [x, "projector_weight_T"], [mm], name="/vocab_projector/MatMul"),
            helper.make_node("Add", [mm, bias], list(node.output), name="/vocab_projector/Add"),
        ]
    del g.node[:]
    g.node.extend(nodes)


def table_dq(proto, bits: int, block: int = 32) -> None:
    """Store the tied table once, quantized (int8 per row, or int4 blockwise along the hidden axis), and
    DequantizeLinear it in the graph into the fp32 tensor every consumer (EmbedLayerNorm, Gemm) reads."""
    g = proto.graph
    init = next(i for i in g.initializer if i.name == TABLE)
    w = numpy_helper.to_array(init).astype(np.float32)  # [vocab, hidden]
    g.initializer.remove(init)
    qname, sname, fname = TABLE + "_q", TABLE + "_scale", TABLE + "_dq"
    if bits == 8:
        scale = np.maximum(np.abs(w).max(axis=1), 1e-12) / 127.0  # [vocab]
        q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
        g.initializer.extend(
            [numpy_helper.from_array(q, qname), numpy_helper.from_array(scale.astype(np.float32), sname)]
        )
        dq = helper.make_node("DequantizeLinear", [qname, sname], [fname], name="table_DQ", axis=0)
    else:  # int4, blocks of `block` along the hidden axis (DequantizeLinear-21 block_size)
        vocab, hidden = w.shape
        blocks = w.reshape(vocab, hidden // block, block)
        scale = np.maximum(np.abs(blocks).max(axis=2), 1e-12) / 7.0  # [vocab, hidden/block]
        q = np.clip(np.rint(blocks / scale[:, :, None]), -8, 7).astype(np.int8).reshape(vocab, hidden)
        g.initializer.extend(
            [
                helper.make_tensor(qname, onnx.TensorProto.INT4, q.shape, q.ravel().tolist()),
                numpy_helper.from_array(scale.astype(np.float32), sname),
            ]
        )
        dq = helper.make_node("DequantizeLinear", [qname, sname], [fname], name="table_DQ", axis=1, block_size=block)
        set_opset(proto, 21)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == TABLE:
                node.input[i] = fname
    g.node.insert(0, dq)


def pack_table(g, bits: int, block: int) -> tuple[int, int]:
    """Replace the tied table by its block-quantized copy (MatMulNBits layout [vocab, hidden/block,
    block*bits/8], unsigned with the implicit zero point 2^(bits-1)) and its scales; returns (vocab, hidden)."""
    init = next(i for i in g.initializer if i.name == TABLE)
    w = numpy_helper.to_array(init).astype(np.float32)  # [vocab, hidden]
    g.initializer.remove(init)
    vocab, hidden = w.shape
    blocks = w.reshape(vocab, hidden // block, block)
    qmax = 2 ** (bits - 1) - 1
    scale = (np.maximum(np.abs(blocks).max(axis=2), 1e-12) / qmax).astype(np.float32)  # [vocab, nb]
    q = np.clip(np.rint(blocks / scale[:, :, None]), -qmax - 1, qmax).astype(np.int32) + 2 ** (bits - 1)
    q = q.astype(np.uint8)  # [vocab, nb, block] unsigned
    if bits == 4:
        q = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)  # [vocab, nb, block/2], low nibble first
    g.initializer.extend(
        [
            numpy_helper.from_array(q, TABLE + "_nbits"),
            numpy_helper.from_array(scale, TABLE + "_scales"),
            numpy_helper.from_array(scale[:, :, None], TABLE + "_scales3"),
            numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "table_gbq_shape"),
        ]
    )
    return vocab, hidden


def gbq(indices: str, name: str, bits: int, block: int) -> tuple[list, str]:
    """Rows of the packed table for `indices`, as [..., hidden] floats."""
    raw, flat = name + "_raw", name + "_out"
    return [
        helper.make_node(
            "GatherBlockQuantized",
            [TABLE + "_nbits", indices, TABLE + "_scales3"],
            [raw],
            name=name,
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=2,
            block_size=block,
            bits=bits,
        ),
        helper.make_node("Reshape", [raw, "table_gbq_shape"], [flat], name=name + "_Reshape"),
    ], flat


def unfused_embedding(eln, bits: int, block: int) -> list:
    """EmbedLayerNormalization as GatherBlockQuantized + position Gather + Add + LayerNormalization."""
    ids, _, _, pos_table, _, gamma, beta, _, pos_ids = list(eln.input)[:9]
    eps = next(a.f for a in eln.attribute if a.name == "epsilon")
    word_nodes, word = gbq(ids, "word_GBQ", bits, block)
    return word_nodes + [
        helper.make_node("Gather", [pos_table, pos_ids], ["pos_emb"], name="pos_Gather", axis=0),
        helper.make_node("Add", [word, "pos_emb"], ["emb_sum"], name="emb_Add"),
        helper.make_node(
            "LayerNormalization", ["emb_sum", gamma, beta], [eln.output[0]], name="emb_LayerNorm", axis=-1, epsilon=eps
        ),
    ]


def table_shared_nbits(proto, bits: int, block: int, accuracy_level: int = 0) -> None:
    """One quantized copy of the tied table, read by both of its users without a whole-table dequantize:
    the lookup through GatherBlockQuantized, the projector Gemm as MatMulNBits + Add (same bytes)."""
    g = proto.graph
    vocab, hidden = pack_table(g, bits, block)
    nodes = []
    for node in g.node:
        if node.op_type == "EmbedLayerNormalization":
            nodes += unfused_embedding(node, bits, block)
        elif node.op_type == "Gather" and node.input[0] == TABLE:  # the leftover Gather that feeds Shape
            more, flat = gbq(node.input[1], "shape_GBQ", bits, block)
            nodes += more + [helper.make_node("Identity", [flat], [node.output[0]], name="shape_GBQ_Identity")]
        elif node.name == PROJECTOR:
            x, _, bias = node.input
            mm = node.output[0] + "_mm"
            nodes += [
                helper.make_node(
                    "MatMulNBits",
                    [x, TABLE + "_nbits", TABLE + "_scales"],
                    [mm],
                    name="/vocab_projector/MatMulNBits",
                    domain="com.microsoft",
                    K=hidden,
                    N=vocab,
                    bits=bits,
                    block_size=block,
                    accuracy_level=accuracy_level,
                ),
                helper.make_node("Add", [mm, bias], list(node.output), name="/vocab_projector/Add"),
            ]
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def set_opset(proto, version: int) -> None:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, version)
    proto.ir_version = max(proto.ir_version, 10)


FFN, ATTN = ("ffn/lin",), ("QKV_MatMul", "out_lin")


def enc(bits=4, block=32, acc=4, **kw) -> dict:
    return {"bits": bits, "block": block, "accuracy_level": acc, **kw}


# name: {"enc": [quantizer passes, in order], "proj": projector as a MatMulNBits copy, "table": (bits, block)}
VARIANTS = {
    "int4-enc-b32": {"enc": [enc()]},
    "int4-enc-b128": {"enc": [enc(block=128)]},
    "int4-enc-b32-acc0": {"enc": [enc(acc=0)]},
    "int4-enc+proj-b32": {"enc": [enc()], "proj": True},
    "table-int8": {"table": (8, 0)},
    "table-int4-b32": {"table": (4, 32)},
    "table-int8+int4-enc-b32": {"enc": [enc()], "table": (8, 0)},
    "table-int8+int4-enc-b128": {"enc": [enc(block=128)], "table": (8, 0)},
    "table-int4-b32+int4-enc-b32": {"enc": [enc()], "table": (4, 32)},
    "table-int4-b32+int4-enc-b128": {"enc": [enc(block=128)], "table": (4, 32)},
    "table-int4-b32+int4-enc+proj-b32": {"enc": [enc()], "proj": True, "table": (4, 32)},
    # the project's int8 "nbits" encoder (8-bit MatMulNBits, block 32, accuracy_level 4) with a quantized table
    "table-int8+int8-enc-b32": {"enc": [enc(bits=8)], "table": (8, 0)},
    "table-int4-b32+int8-enc-b32": {"enc": [enc(bits=8)], "table": (4, 32)},
    "table-int8+int8-enc-b32-acc0": {"enc": [enc(bits=8, acc=0)], "table": (8, 0)},  # project's "weight-only"
    "table-int8+int8-enc-b128-acc0": {"enc": [enc(bits=8, block=128, acc=0)], "table": (8, 0)},
    "table-int8+int8-enc-b128": {"enc": [enc(bits=8, block=128)], "table": (8, 0)},
    # tied table quantized once, read by GatherBlockQuantized (lookup) and MatMulNBits (projector): no per-call DQ
    "shared-int8-b128": {"shared": (8, 128, 0)},
    "shared-int4-b32": {"shared": (4, 32, 0)},
    "shared-int8-b128+int8-enc-b128-acc0": {"enc": [enc(bits=8, block=128, acc=0)], "shared": (8, 128, 0)},
    "shared-int8-b128+int8-enc-b32-acc0": {"enc": [enc(bits=8, acc=0)], "shared": (8, 128, 0)},
    "shared-int8-b128+int4-enc-b32": {"enc": [enc()], "shared": (8, 128, 0)},
    "shared-int4-b32+int4-enc-b32": {"enc": [enc()], "shared": (4, 32, 0)},
    "shared-int8-b128-acc4": {"shared": (8, 128, 4)},
    "shared-int8-b128-acc4+int8-enc-b32": {"enc": [enc(bits=8)], "shared": (8, 128, 4)},
    # better 4-bit encoders: asymmetric RTN, smaller blocks, HQQ; which MatMuls are sensitive
    "int4-ffn-only-b32": {"enc": [enc(only=FFN)]},
    "int4-attn-only-b32": {"enc": [enc(only=ATTN)]},
    "table-int8+int4-enc-asym-b32": {"enc": [enc(sym=False)], "table": (8, 0)},
    "table-int8+int4-enc-b16": {"enc": [enc(block=16)], "table": (8, 0)},
    "table-int8+int4-enc-hqq-b32": {"enc": [enc(algo="hqq", acc=0)], "table": (8, 0)},
    "table-int8+int4-enc-hqq-b64": {"enc": [enc(block=64, algo="hqq", acc=0)], "table": (8, 0)},
    "table-int8+int4-ffn+int8-attn-b32": {"enc": [enc(only=FFN), enc(bits=8)], "table": (8, 0)},
}


def build() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    fp32 = onnx.load(str(SRC / "fast.onnx"))
    built = {}
    for name, spec in VARIANTS.items():
        if WANTED and name not in WANTED:
            continue
        started = time.perf_counter()
        proto = onnx.ModelProto()
        proto.CopyFrom(fp32)
        try:
            proto = apply_variant(proto, spec)
            dst = OUT / f"{name}.onnx"
            onnx.save(proto, str(dst))
            built[name] = {
                "mb": dst.stat().st_size / 1e6,
                "ops": weight_op_counts(proto),
                "s": round(time.perf_counter() - started, 1),
            }
        except Exception as exc:  # noqa: BLE001 - recorded, the other variants go on
            built[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, built[name], flush=True)
    return built


def apply_variant(proto, spec: dict):
    """Apply one VARIANTS spec to a copy of the fp32 graph: projector, encoder, table, shared table."""
    from export.optimize import attention_to_mha

    head = head_nodes(proto)
    if spec.get("proj"):
        projector_to_matmul(proto)
    if spec.get("enc"):
        proto = attention_to_mha(proto)
        if not any(o.domain == "com.microsoft" for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        for step in spec["enc"]:
            proto = quantize_encoder(proto, **step, exclude=head)
    if spec.get("table"):
        table_dq(proto, *spec["table"])
    if spec.get("shared"):
        table_shared_nbits(proto, *spec["shared"])
    return proto


def weight_op_counts(proto) -> dict[str, int]:
    ops = Counter(
        n.op_type
        for n in proto.graph.node
        if n.op_type in ("MatMulNBits", "MatMul", "DequantizeLinear", "Gemm", "MultiHeadAttention")
    )
    return dict(ops)


# --------------------------------------------------------------------------- 2. quality
def session(path: Path, threads: int = 2):
    import onnxruntime as ort

    from deniro_rt.providers import CPU, session_options

    options = session_options(CPU, threads)
    if FOLD_DQ:  # lets constant folding evaluate DequantizeLinear(initializer) once at load (fp32 table in RAM)
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=[CPU])


def graphs() -> dict[str, Path]:
    return {
        "fp32": SRC / "fast.onnx",
        **{n: OUT / f"{n}.onnx" for n in VARIANTS if (OUT / f"{n}.onnx").exists() and (not WANTED or n in WANTED)},
    }


def score() -> dict:
    from deniro_rt.artifact import load_manifest

    manifest = load_manifest(SRC)
    data, ref = reference_run(manifest)
    ref_all = np.concatenate(ref.logits)  # [n, vocab] fp32 log-probs
    ref_top1 = ref_all.argmax(axis=1)
    results = {}
    for name, path in graphs().items():
        started = time.perf_counter()
        try:
            s = session(path)
        except Exception as exc:  # noqa: BLE001
            results[name] = {"error": f"load: {type(exc).__name__}: {str(exc)[:300]}"}
            print(name, results[name], flush=True)
            continue
        quality = graph_quality(s, data, ref, ref_all, ref_top1, manifest.vocab_size)
        results[name] = {
            "mb": round(path.stat().st_size / 1e6, 2),
            **quality,
            "s": round(time.perf_counter() - started, 1),
        }
        print(name, results[name], flush=True)
    return results


def reference_run(manifest):
    """The validation set (SENTENCES IMDB test sentences) and the fp32 graph's answers on it."""
    from export import validate
    from export.requantize import artifact_tokenizer

    tok = artifact_tokenizer(SRC)
    texts, origin = validate.load_texts("/work/shared/data/imdb", "test", "text")
    spec = validate.ValidationSpec(
        manifest.vocab_size,
        manifest.max_positions,
        sentences=SENTENCES,
        random_sequences=0,
        perplexity_chunks=32,
        batch_size=16,
        seed=0,
    )
    data = validate.build_validation_set(tok, texts, origin, spec)
    ref = validate.fast_reference(session(SRC / "fast.onnx"), data, manifest.vocab_size)
    return data, ref


def graph_quality(s, data, ref, ref_all, ref_top1, vocab_size: int) -> dict:
    """Top-k agreement, log-prob drift on the fp32 top-1, perplexity and batch drift of one session."""
    from export import validate

    outs = []
    for batch in data.queries:
        every = np.broadcast_to(np.arange(vocab_size, dtype=np.int64), (len(batch.mask_index), vocab_size))
        outs.append(validate.run_fast(s, batch, every, 5))
    _, ids, lps = (np.concatenate(p) for p in zip(*outs))
    m = validate.topk_metrics(ref_all, ids, 5)
    dlp = np.abs(lps[np.arange(len(lps)), ref_top1] - ref_all[np.arange(len(lps)), ref_top1])
    ppl = validate.fast_perplexity(s, data)
    return {
        "rows": int(len(ids)),
        "top1": m["top1_agreement"],
        "top5_identical": m["top5_identical"],
        "mean_abs_dlogprob_top1": float(dlp.mean()),
        "max_abs_dlogprob_top1": float(dlp.max()),
        "perplexity": ppl,
        "ppl_rel_diff": validate.rel_diff(ppl, ref.perplexity),
        **validate.batch_drift(s, data.queries[0], 5),
    }


# --------------------------------------------------------------------------- 3. latency
def prompt_feed() -> dict:
    """One 16-token sentence with one mask, as the fast graph takes it."""
    from export.requantize import artifact_tokenizer

    tok = artifact_tokenizer(SRC)
    text = f"This is a great {tok.mask_token} and I would happily watch it again soon."
    ids = np.asarray(tok(text)["input_ids"], np.int64)
    assert len(ids) == 16, len(ids)
    return {
        "input_ids": ids[None],
        "attention_mask": np.ones((1, 16), np.int64),
        "mask_index": np.flatnonzero(ids == tok.mask_token_id).astype(np.int64),
        "target_ids": np.zeros((1, 1), np.int64),
        "top_k": np.array([5], np.int64),
    }


def timed(s, feed: dict, runs: int, warmup: int) -> dict:
    from bench.quant import timed_block

    t = timed_block(s, feed, runs, warmup)
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3)}


def latency(runs: int = 200, warmup: int = 20) -> dict:
    """B=1 p50 of every variant, each next to fp32 timed just before it in the same process."""
    import psutil

    feed, proc, results = prompt_feed(), psutil.Process(), {}
    fp32 = session(SRC / "fast.onnx")
    results["fp32 (first)"] = timed(fp32, feed, runs, warmup)
    for name in [n for n in graphs() if n != "fp32"]:
        try:
            rss0 = proc.memory_info().rss
            s = session(OUT / f"{name}.onnx")
            rss = (proc.memory_info().rss - rss0) / 1e6
        except Exception as exc:  # noqa: BLE001
            results[name] = {"error": f"load: {type(exc).__name__}: {str(exc)[:300]}"}
            continue
        results[name] = {
            **timed(s, feed, runs, warmup),
            "session_rss_mb": round(rss, 1),
            "fp32_p50_ms_just_before": timed(fp32, feed, runs, warmup)["p50_ms"],
        }
        del s
        print(name, results[name], flush=True)
    results["fp32 (last)"] = timed(fp32, feed, runs, warmup)
    return results


def report() -> None:
    """Markdown tables from size.json (python experiments/size_experiment.py report)."""
    data = json.loads(RESULTS.read_text())
    inv = data["inventory"]
    print("| initializer | shape | dtype | MB | consumers |\n|---|---|---|---|---|")
    for r in inv["top"][:14]:
        print(f"| {r['name']} | {r['shape']} | {r['dtype']} | {r['mb']:.2f} | {'; '.join(r['consumers'])} |")
    print("\n| group | MB |\n|---|---|")
    for k, v in inv["groups"].items():
        print(f"| {k} | {v:.2f} |")
    score, s1024 = data.get("score", {}), data.get("score_1024", {})
    timed, fold = data.get("time", {}), data.get("time_fold_dq", {})
    print(
        "\n| variant | MB | top-1 | top-5 identical | mean abs dlogp top-1 | ppl rel diff | top-1 (1024) "
        "| p50 ms | fp32 p50 ms | p50 ms folded DQ | fp32 (folded run) |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for name, m in score.items():
        if "error" in m:
            print(f"| {name} | | {m['error']} |")
            continue
        t, f, b = timed.get(name, {}), fold.get(name, {}), s1024.get(name, {})
        big = f"{100 * b['top1']:.2f} %" if b else ""
        fp = timed.get("fp32 (first)", {}) if name == "fp32" else {}
        print(
            f"| {name} | {m['mb']:.2f} | {100 * m['top1']:.2f} % | {100 * m['top5_identical']:.2f} % "
            f"| {m['mean_abs_dlogprob_top1']:.4f} | {m['ppl_rel_diff']:.1e} "
            f"| {big} "
            f"| {t.get('p50_ms', fp.get('p50_ms', ''))} | {t.get('fp32_p50_ms_just_before', '')} "
            f"| {f.get('p50_ms', '')} | {f.get('fp32_p50_ms_just_before', '')} |"
        )


if __name__ == "__main__":
    step = sys.argv[1]
    if step == "report":
        sys.exit(report())
    value = {"inventory": inventory, "build": build, "score": score, "time": latency}[step]()
    suffix = (
        "_fold_dq" if FOLD_DQ and step == "time" else f"_{SENTENCES}" if SENTENCES != 256 and step == "score" else ""
    )
    save_results(step + suffix, value)
    if step == "inventory":
        print(json.dumps({k: v for k, v in value.items() if k != "top"}, indent=1))
