"""deniro_rt/cuda.py: the bucketing and placement logic on CPU (always), the CUDA provider with
`pytest -m gpu` on a GPU box with onnxruntime-gpu (never run yet: no GPU lent so far)."""

import numpy as np
import onnxruntime as ort
import pytest

from deniro_rt import FillMask
from deniro_rt.cuda import (
    Bucket,
    BucketSpec,
    CudaBinding,
    GraphRunner,
    choose_bucket,
    mask_bucket,
    node_placement,
    pad_feed,
    placement_from_trace,
    round_up,
    unpad_outputs,
)

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")]
TEXTS = ["This is a great [MASK]!", "The acting was [MASK] and the [MASK] was too long."] * 40


def flat(results: list) -> list[dict]:
    """fill()'s per-text results (a text with several masks gives one list per mask) as one list of predictions."""
    return [p for r in results for m in (r if isinstance(r[0], list) else [r]) for p in m]


# --------------------------------------------------------------------------- buckets (CPU)
def test_round_up_and_mask_buckets():
    assert [round_up(n, (16, 32, 64)) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, None]
    assert [mask_bucket(n) for n in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 16, 128]


def test_choose_bucket_covers_the_shape_or_declines():
    spec = BucketSpec(batches=(1, 8, 64), seqs=(16, 64, 512), max_tokens=64 * 64)
    assert choose_bucket(spec, 3, 20, 5, 1, 5, 512) == Bucket(batch=8, seq=64, masks=8, targets=1, k=5)
    assert choose_bucket(spec, 1, 7, 1, 1, 3, 512) == Bucket(1, 16, 1, 1, 3)
    assert choose_bucket(spec, 65, 16, 65, 1, 5, 512) is None  # batch beyond the buckets
    assert choose_bucket(spec, 64, 100, 64, 1, 5, 512) is None  # 64 x 512 tokens: runs uncaptured
    assert choose_bucket(spec, 1, 100, 1, 1, 5, 128) == Bucket(1, 128, 1, 1, 5)  # model maximum caps seq


def test_pad_feed_rebases_mask_positions_and_pads_every_input():
    feed = {
        "input_ids": np.array([[2, 7, 4, 3], [2, 4, 4, 3]]),
        "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "mask_index": np.array([2, 5, 6]),
        "target_ids": np.array([[9], [8], [7]]),
        "top_k": np.array([5]),
    }
    padded = pad_feed(feed, Bucket(batch=4, seq=8, masks=4, targets=1, k=5), pad_id=0)
    assert padded["input_ids"].shape == padded["attention_mask"].shape == (4, 8)
    assert padded["input_ids"][:2, :4].tolist() == feed["input_ids"].tolist() and not padded["input_ids"][2:].any()
    assert padded["attention_mask"][:, 4:].sum() == 0 and padded["attention_mask"][2:, 0].tolist() == [1, 1]
    assert padded["mask_index"].tolist() == [2, 9, 10, 0]  # row * 8 + col; the pad row points at 0
    assert padded["target_ids"].tolist() == [[9], [8], [7], [0]]
    at_masks = padded["input_ids"].ravel()[padded["mask_index"][:3]]
    assert at_masks.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="does not fit"):
        pad_feed(feed, Bucket(batch=1, seq=8, masks=4, targets=1, k=5), pad_id=0)


def test_padding_to_a_bucket_does_not_change_answers(tiny_artifact):
    """The real ORT graph on CPU: padded rows, columns and mask rows leave the real rows' top-k alone."""
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    texts = ["the [MASK] was great but the [MASK] was too long .", "a [MASK] movie", "[MASK] !"]
    (feed,), _ = fm.prepared_feeds(texts, top_k=4)
    plain = fm.run_graph(feed)
    bucket = choose_bucket(BucketSpec(), *feed_dims(feed), fm.manifest.max_positions)
    assert bucket.batch == 4 and bucket.seq == 16 and bucket.masks == 4
    padded = unpad_outputs(fm.run_graph(pad_feed(feed, bucket, fm.pad_id)), len(feed["mask_index"]))
    assert padded[1].tolist() == plain[1].tolist()
    np.testing.assert_allclose(padded[0], plain[0], atol=1e-5)


def feed_dims(feed):
    return (*feed["input_ids"].shape, len(feed["mask_index"]), feed["target_ids"].shape[1], int(feed["top_k"][0]))


def test_bucketed_runner_plumbing_on_cpu(tiny_artifact):
    """GraphRunner and CudaBinding with device 'cpu': the same bindings, buffers, graph ids and unpadding as on
    CUDA (only the capture itself needs a GPU); fill through them gives the plain answers."""
    plain_fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    binding = CudaBinding(fm.session, no_graph=True, device="cpu")
    runner = GraphRunner(
        fm.session,
        binding,
        fm.pad_id,
        fm.manifest.max_positions,
        0,
        BucketSpec(batches=(1, 4, 8), seqs=(16, 32), max_tokens=8 * 32),
        device="cpu",
    )
    fm._run = runner.run
    texts = TEXTS[:6] + ["the movie was long and slow . " * 8 + "the end was [MASK] ."]  # > 32 tokens: plain
    for _ in range(2):  # the second pass reuses every slot
        ours, plain = fm.fill(texts, top_k=4, batch_size=4), plain_fm.fill(texts, top_k=4, batch_size=4)
        assert [(p["token"], p["sequence"]) for p in flat(ours)] == [(p["token"], p["sequence"]) for p in flat(plain)]
        np.testing.assert_allclose([p["score"] for p in flat(ours)], [p["score"] for p in flat(plain)], rtol=1e-5)
        assert fm.fill(TEXTS[0]) == plain_fm.fill(TEXTS[0])
    assert sorted(slot.graph_id for slot in runner.slots.values()) == list(range(1, len(runner.slots) + 1))
    assert len(runner.slots) >= 2 and {b.batch for b in runner.slots} <= {1, 4, 8} and runner.enabled
    assert binding.local.buffers  # the long text went through plain IO binding


def test_plain_binding_keeps_buffers_for_its_most_recent_shapes_only(tiny_artifact):
    """CudaBinding kept device buffers for every feed shape a thread ever saw: a long-running GPU service with
    varied batches grew without bound. Now the least recently used shapes beyond max_shapes are freed, and
    every answer stays the plain session's."""
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    binding = CudaBinding(fm.session, no_graph=True, device="cpu", max_shapes=2)
    texts = ["a [MASK] movie", "the [MASK] was long", "it was a [MASK] film , really", "[MASK] ! " * 7]
    feeds = [fm.prepared_feeds([text], top_k=3)[0][0] for text in texts]  # four sequence lengths: four shapes
    shape_of = [feed["input_ids"].shape for feed in feeds]
    assert len(set(shape_of)) == 4
    for order in ([0, 1, 2, 3], [3, 2, 0, 2]):
        for i in order:
            got, want = binding.run(feeds[i]), fm.run_graph(feeds[i])
            assert got[1].tolist() == want[1].tolist()
            np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    kept = [  # each key holds (input name, shape, dtype) per device input; least recently used first
        next(shape for name, shape, _ in key if name == "input_ids") for key in binding.local.buffers
    ]
    assert kept == [shape_of[0], shape_of[2]]
    buffers = binding.local.buffers[next(reversed(binding.local.buffers))]
    binding.run(feeds[2])  # a shape still kept: its buffers are reused, nothing allocated
    assert binding.local.buffers[next(reversed(binding.local.buffers))] is buffers
    with pytest.raises(ValueError, match="max_shapes must be at least 1, got 0"):
        CudaBinding(fm.session, device="cpu", max_shapes=0)


def test_a_session_onnxruntime_built_on_the_cpu_is_refused(monkeypatch):
    """When the CUDA EP does not load (a library missing from LD_LIBRARY_PATH), ORT builds the session on the CPU
    and only warns: make_session refuses it at once (no retry without graphs), so no CPU timing passes as CUDA."""
    from deniro_rt import cuda
    from deniro_rt.errors import DeniroError

    built = []

    def fake(providers_run):
        class Session:
            def __init__(self, path, options, providers):
                built.append(providers[0][1]["enable_cuda_graph"])

            def get_providers(self):
                return providers_run

        return Session

    monkeypatch.setattr(cuda.ort, "InferenceSession", fake(["CPUExecutionProvider"]))
    for graphs in (True, False):
        with pytest.raises(DeniroError, match="fell back to CPUExecutionProvider"):
            cuda.make_session("fast_fp16.onnx", ort.SessionOptions(), graphs)
    assert built == ["1", "0"]
    monkeypatch.setattr(cuda.ort, "InferenceSession", fake(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    session, graphs = cuda.make_session("fast_fp16.onnx", ort.SessionOptions(), True)
    assert graphs and session.get_providers()[0] == "CUDAExecutionProvider"


def test_auto_runs_on_the_cpu_when_a_listed_cuda_does_not_start(tiny_artifact, monkeypatch, caplog):
    """onnxruntime-gpu on a machine whose CUDA does not start (no GPU, a library missing): device='auto' gives the
    CPU's answers with a warning, device='cuda' raises the reason."""
    from deniro_rt import cuda, runtime
    from deniro_rt.errors import CudaUnavailable

    def broken(path, options, cuda_graph):
        raise CudaUnavailable("device='cuda': ONNX Runtime could not start CUDAExecutionProvider for x")

    cpu, listed = "CPUExecutionProvider", "CUDAExecutionProvider"
    monkeypatch.setattr(runtime, "resolve_provider", lambda device: cpu if device == "cpu" else listed)
    monkeypatch.setattr(cuda, "make_session", broken)
    with pytest.raises(CudaUnavailable, match="could not start"):
        FillMask(tiny_artifact, device="cuda")
    auto = FillMask(tiny_artifact, device="auto")
    assert (auto.provider, auto.token_budget) == (
        "CPUExecutionProvider",
        runtime.check_budget(None, "CPUExecutionProvider"),
    )
    assert "device='auto' runs on the CPU" in caplog.text
    texts = ["the film was [MASK] .", "a [MASK] movie"]
    assert auto.fill(texts) == FillMask(tiny_artifact, device="cpu").fill(texts)


def test_export_validation_refuses_a_cuda_session_built_on_the_cpu(monkeypatch):
    """export validates the CUDA graphs on CUDA: a session ORT quietly built on the CPU would validate the CPU."""
    from deniro_rt.errors import CudaUnavailable
    from export import validate

    class OnTheCpu:
        def __init__(self, path, options, providers):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", OnTheCpu)
    with pytest.raises(CudaUnavailable, match="fell back to CPUExecutionProvider"):
        validate.session_for("fast_fp16.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"], "fp16")
    assert isinstance(validate.session_for("fast.onnx", ["CPUExecutionProvider"], "fp32"), OnTheCpu)


# --------------------------------------------------------------------------- placement (CPU)
def test_node_placement_reads_the_profiling_trace(tiny_artifact):
    fm = FillMask(tiny_artifact, device="cpu", precision="fp32")
    ids = fm.tokenizer.encode("a [MASK] movie").ids
    feed = {
        "input_ids": np.array([ids]),
        "attention_mask": np.ones((1, len(ids)), np.int64),
        "mask_index": np.array([ids.index(fm.mask_id)]),
        "target_ids": np.zeros((1, 1), np.int64),
        "top_k": np.array([3]),
    }
    placed = node_placement(str(tiny_artifact / "fast.onnx"), ["CPUExecutionProvider"], feed)
    assert set(placed["nodes"]) == {"CPUExecutionProvider"} and placed["nodes"]["CPUExecutionProvider"] > 5
    assert placed["memcpy"] == 0 and "Attention" in placed["cpu_ops"] and "Attention" in placed["fallback"]


def test_placement_from_a_cuda_trace():
    def node(op, provider):
        return {"cat": "Node", "name": f"{op}_1_kernel_time", "args": {"op_name": op, "provider": provider}}

    events = [
        node("Attention", "CUDAExecutionProvider"),
        node("Shape", "CPUExecutionProvider"),
        node("MemcpyToHost", "CUDAExecutionProvider"),
        node("TopK", "CPUExecutionProvider"),
        {"cat": "Session", "name": "model_run", "args": {}},
    ]
    placed = placement_from_trace(events)
    assert placed == {
        "nodes": {"CUDAExecutionProvider": 2, "CPUExecutionProvider": 2},
        "cpu_ops": {"Shape": 1, "TopK": 1},
        "memcpy": 1,
        "fallback": ["TopK"],
    }


# --------------------------------------------------------------------------- CUDA (GPU only)
@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_fp32_matches_cpu_fp32(cuda_graph):
    cpu = FillMask(device="cpu", precision="fp32").fill(TEXTS, top_k=5, batch_size=16)
    cuda_runtime = FillMask(device="cuda", precision="fp32", cuda_graph=cuda_graph)
    assert cuda_runtime.provider == "CUDAExecutionProvider"
    for _ in range(3):  # the graph is captured after a few runs: the replays must agree too
        cuda = cuda_runtime.fill(TEXTS, top_k=5, batch_size=16)
        a, b = flat(cpu), flat(cuda)
        assert [p["token"] for p in a] == [p["token"] for p in b]
        np.testing.assert_allclose([p["score"] for p in a], [p["score"] for p in b], atol=1e-4)
        assert cuda_runtime.fill(TEXTS[0]) == cuda_runtime.fill([TEXTS[0]])[0]


@pytest.mark.parametrize("stored", ["int8 rows", "mixed 8/4-bit table"])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_stored_weights_are_folded_before_cuda_runs(stored, tmp_path, tiny_model_dir, imdb_dir):
    """export --weights int8 (the shipped model) and --table-8bit-rows graphs: ONNX Runtime folds the stored
    weights to fp32 once at load on CUDA too, so no DequantizeLinear or BitShift runs per call, and the
    answers are the CPU's."""
    import onnx

    from deniro_rt.artifact import load_manifest
    from deniro_rt.models import DEFAULT_MODEL_DIR
    from deniro_rt.providers import CPU, CUDA, session_options
    from export.config import ExportConfig
    from export.pipeline import main

    folder = DEFAULT_MODEL_DIR
    if stored.startswith("mixed"):
        folder = tmp_path / "mixed"
        small = {"sentences": 48, "random_sequences": 8, "perplexity_chunks": 4, "dataset": str(imdb_dir)}
        main(ExportConfig(onnx=True, model=str(tiny_model_dir), output=str(folder), weights="int8",
                          table_8bit_rows=300, full_graph=False, **small))  # fmt: skip
    options = session_options(CUDA, None, "fp32")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    graph = load_manifest(folder).graph_path("fp32")
    ort.InferenceSession(str(graph), options, providers=[(CUDA, {"use_tf32": "0"}), CPU])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert not ops & {"DequantizeLinear", "BitShift"}, ops
    texts = TEXTS[:2]
    cpu = FillMask(folder, device="cpu", precision="fp32").fill(texts, top_k=5)
    cuda = FillMask(folder, device="cuda", precision="fp32", cuda_graph=False).fill(texts, top_k=5)
    assert [p["token"] for p in flat(cpu)] == [p["token"] for p in flat(cuda)]
    np.testing.assert_allclose([p["score"] for p in flat(cpu)], [p["score"] for p in flat(cuda)], atol=1e-4)
