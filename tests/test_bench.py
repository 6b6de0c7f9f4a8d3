"""bench/: the harness on the tiny model (--quick), so it cannot rot. Checks structure and parity, never speed."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from bench import parity, report
from bench.__main__ import parse_args, run
from bench.config import BenchConfig
from bench.engines import Prediction, from_fill_results
from bench.quant import QuantConfig
from bench.run import resolve_torch_model
from bench.workload import PROMPT, build_workload, load_tokenizer
from deniro_rt.errors import DeniroError

ENGINES = ["pytorch-card", "pytorch-batched", "hf-pipeline", "optimum-ort", "deniro_rt", "deniro_rt-model"]
OURS = ("deniro_rt", "deniro_rt-model")
AUTOCAST = {("pytorch-card", "bf16"), ("pytorch-batched", "bf16")}  # PyTorch bf16 autocast rows on CPU (issue 22)


def bench_args(command, tiny_artifact, tiny_model_dir, imdb_dir, out, *extra) -> list[str]:
    return [
        command,
        "--quick",
        "--device",
        "cpu",
        "--model",
        str(tiny_artifact),
        "--torch-model",
        str(tiny_model_dir),
        "--dataset",
        str(imdb_dir),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def quick(tiny_artifact, imdb_dir, tmp_path_factory):
    """`python -m bench all --quick` on the tiny artifact: (exit code, bench.json, out folder).

    No --torch-model: the PyTorch side is found through the manifest's source.model.
    """
    out = tmp_path_factory.mktemp("bench")
    code = run(
        [
            "all",
            "--quick",
            "--device",
            "cpu",
            "--model",
            str(tiny_artifact),
            "--dataset",
            str(imdb_dir),
            "--out",
            str(out),
        ]
    )
    return code, json.loads((out / "bench.json").read_text()), out


@pytest.fixture(scope="module")
def ours(tiny_artifact) -> list[str]:
    """deniro_rt's precisions in the quick run: the artifact's CPU graphs (fp32, int8) plus the runtime's own
    default here, bf16 where the tiny artifact's bf16 record passed and this CPU runs bf16 by default."""
    from deniro_rt.artifact import load_manifest
    from deniro_rt.openvino import bf16_by_default

    manifest = load_manifest(tiny_artifact)
    return ["fp32", "int8"] + (["bf16"] if manifest.passed("bf16") and bf16_by_default() else [])


# --------------------------------------------------------------------------- the quick run
def test_quick_all_writes_every_report(quick):
    code, result, out = quick
    assert code == 0
    assert set(result) >= {"header", "config", "model", "workload", "parity", "rows", "speedups", "train"}
    from PIL import Image

    with Image.open(out / "bench.png") as png:  # a 256-colour PNG: every GPU call carries bench/results
        assert (png.format, png.mode) == ("PNG", "P") and png.width > 600
    md = (out / "bench.md").read_text()
    for title in (
        "## Parity",
        "## Latency and throughput",
        "## Host overhead per call",
        "## Speedup of deniro_rt",
        "## Training loop",
    ):
        assert title in md
    assert md.count("\n| deniro_rt |") == sum(r["engine"] == "deniro_rt" for r in result["rows"])


def test_torch_model_comes_from_the_manifest(quick, tiny_artifact, tiny_model_dir, ours):
    model = quick[1]["model"]
    assert model["artifact"] == str(tiny_artifact) and model["torch_model"] == str(tiny_model_dir)
    assert model["precisions"] == ours


def test_torch_model_fallbacks(tmp_path, tiny_artifact):
    from deniro_rt.artifact import load_manifest

    manifest = load_manifest(tiny_artifact)
    assert resolve_torch_model(None, tiny_artifact, manifest) == Path(manifest.raw["source"]["model"])
    bare = replace(manifest, raw={**manifest.raw, "source": {"model": str(tmp_path / "gone")}})
    with pytest.raises(DeniroError, match="pass --torch-model"):
        resolve_torch_model(None, tiny_artifact, bare)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_torch_model(None, tmp_path, bare) == tmp_path  # the artifact holds the weights itself


def test_header_names_hardware_and_versions(quick):
    header = quick[1]["header"]
    assert header["device"] == "cpu"
    assert {"cpu", "physical_cores", "logical_cores", "memory_gib", "gpu", "gpu_driver"} <= set(header["hardware"])
    assert header["hardware"]["cpu"] and header["hardware"]["logical_cores"] >= 1
    versions = header["versions"]
    for package in ("python", "torch", "transformers", "onnxruntime", "optimum"):
        assert versions[package], package


def test_one_row_per_engine_precision_provider_batch_length(quick, ours):
    rows = quick[1]["rows"]
    keys = [(r["engine"], r["precision"], r["provider"], r["batch"], r["length"]) for r in rows]
    assert len(keys) == len(set(keys))
    seen = {(r["engine"], r["precision"]) for r in rows}
    assert seen == {(e, "fp32") for e in ENGINES} | {(e, p) for e in OURS for p in ours} | AUTOCAST
    assert {r["engine"] for r in rows if r["scope"] == "model"} == {"deniro_rt-model"}
    lengths = [16, 64]
    for engine, precision in seen:
        mine = {(r["batch"], r["length"]): r for r in rows if (r["engine"], r["precision"]) == (engine, precision)}
        batches = {1} if engine == "pytorch-card" else {1, 16}
        assert set(mine) == {(b, n) for b in batches for n in lengths} | {(1, PROMPT)}, engine
        for n in lengths + [PROMPT]:
            assert_latency(mine[(1, n)]["latency"])
        for b in batches - ({1} if engine != "pytorch-card" else set()):
            for n in lengths:
                assert_throughput(mine[(b, n)]["throughput"])


def test_deniro_batch_rows_say_their_graph_runs_hold_at_most_the_token_budget(quick):
    """A deniro_rt row at batch B runs B texts a call, but on CPU in graph runs of at most 1,024 padded tokens
    (fewer rows than B): the row and bench.md say so, beside PyTorch's one padded forward per batch."""
    from deniro_rt.runtime import CPU_TOKEN_BUDGET

    rows = quick[1]["rows"]
    assert {r["token_budget"] for r in rows if r["engine"].startswith("deniro_rt")} == {CPU_TOKEN_BUDGET}
    assert {r["token_budget"] for r in rows if not r["engine"].startswith("deniro_rt")} == {None}
    assert f"at most {CPU_TOKEN_BUDGET} padded tokens" in (quick[2] / "bench.md").read_text()


def assert_latency(lat):
    assert lat["samples"] == 8
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]


def assert_throughput(thr):
    assert thr["sentences"] == 48 and thr["sentences_per_s"] > 0 and math.isfinite(thr["sentences_per_s"])


def test_every_engine_predicts_what_pytorch_predicts(quick):
    """Same workload for every engine: each one's top-1 matches pytorch-batched's (a fast wrong engine fails)."""
    for row in quick[1]["rows"]:
        if row["throughput"]:
            assert row["top1_vs_pytorch"] >= (0.97 if row["precision"] in ("int8", "bf16") else 0.999), row


def test_speedups_cover_every_other_engine(quick, ours):
    result = quick[1]
    speedups = result["speedups"]
    assert all(s["speedup"] > 0 and s["deniro_rt"].startswith("deniro_rt/") for s in speedups)
    latency = {(s["deniro_rt"], s["length"], s["versus"]) for s in speedups if s["metric"] == "latency"}
    others = {f"{e}/fp32" for e in ENGINES if e not in OURS} | {f"{e}/{p}" for e, p in AUTOCAST}  # end to end
    assert latency == {(f"deniro_rt/{p}", n, v) for p in ours for n in (16, 64, PROMPT) for v in others}
    through = {(s["deniro_rt"], s["length"], s["versus"]) for s in speedups if s["metric"] == "throughput"}
    assert through == {(f"deniro_rt/{p}", n, v) for p in ours for n in (16, 64) for v in others}


def test_host_overhead_rows(quick, ours):
    """deniro_rt e2e p50 minus the graph alone (deniro_rt-model) per precision and length, batch 1."""
    rows, overhead = quick[1]["rows"], quick[1]["overhead"]
    assert {(o["precision"], o["length"]) for o in overhead} == {(p, n) for p in ours for n in (16, 64, PROMPT)}
    p50 = {(r["engine"], r["precision"], r["length"]): r["latency"]["p50_ms"] for r in rows if r["batch"] == 1}
    for o in overhead:
        e2e, model = (
            p50[("deniro_rt", o["precision"], o["length"])],
            p50[("deniro_rt-model", o["precision"], o["length"])],
        )
        assert (o["e2e_p50_ms"], o["model_p50_ms"]) == (e2e, model) and o["host_ms"] == pytest.approx(e2e - model)


def test_model_only_engine_needs_prepared_inputs(tiny_artifact, tiny_model_dir):
    from bench.engines import Context, DeniroRtModel
    from deniro_rt.artifact import load_manifest

    ctx = Context(
        device="cpu", artifact=tiny_artifact, manifest=load_manifest(tiny_artifact), torch_model=tiny_model_dir, top_k=3
    )
    engine = DeniroRtModel(ctx, "fp32")
    calls = [["a [MASK] movie .", "the [MASK] was long and the end was bad ."], ["[MASK] !"]]
    engine.prepare(calls, 1)
    pred = engine.fill_batch(calls[0], 1)  # batch 1: two graph runs, rows back in input order
    expected = engine.fm.fill(calls[0], top_k=3)
    assert pred.ids.tolist() == [[p["token"] for p in r] for r in expected]
    np.testing.assert_allclose(np.exp(pred.logprobs), [[p["score"] for p in r] for r in expected], rtol=1e-5)
    with pytest.raises(DeniroError, match="prepare"):
        engine.fill_batch(list(calls[1]), 1)  # equal texts, another list: was not prepared


def test_host_overhead_of_the_shipped_model_without_pytorch(imdb_dir, tmp_path):
    """deniro_rt engines alone need no PyTorch checkpoint (the shipped model has none here)."""
    code = run(
        [
            "latency",
            "--quick",
            "--device",
            "cpu",
            "--engines",
            "deniro_rt,deniro_rt-model",
            "--precisions",
            "fp32",
            "--lengths",
            "16",
            "--dataset",
            str(imdb_dir),
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "latency.json").read_text())
    assert code == 0 and result["model"]["torch_model"] == "None"
    assert [(o["precision"], o["length"]) for o in result["overhead"]] == [("fp32", 16), ("fp32", PROMPT)]
    assert all(o["model_p50_ms"] > 0 for o in result["overhead"]) and not result["speedups"]


def test_markdown_table_helper():
    assert report.table("T", ["a", "b"], [[1, "x"], [2.5, ""]]) == [
        "## T",
        "",
        "| a | b |",
        "|---|---|",
        "| 1 | x |",
        "| 2.5 |  |",
        "",
    ]


def test_parity_passes_the_export_thresholds(quick, ours):
    results = {r["precision"]: r for r in quick[1]["parity"]}
    assert list(results) == ours and all(r["passed"] for r in results.values())
    fp32 = results["fp32"]
    assert fp32["passed"] and not fp32["failures"]
    assert fp32["sentences"]["top5_identical"] >= 0.999
    assert fp32["chunks"]["rel_diff"] <= 1e-4
    assert fp32["sentences"]["max_abs_logprob_diff"] < 1e-3
    assert fp32["chunks"]["torch"]["tokens"] == fp32["chunks"]["deniro_rt"]["tokens"] > 0
    int8 = results["int8"]
    assert int8["passed"], int8["failures"]
    assert int8["sentences"]["top1_agreement"] >= 0.97 and int8["chunks"]["rel_diff"] <= 0.03


def test_thresholds_are_the_export_validation_ones():
    assert parity.THRESHOLDS == {
        "fp32": {"top5_identical": 0.999, "perplexity_rel_diff": 1e-4},
        "fp16": {"top1_agreement": 0.995, "perplexity_rel_diff": 5e-3},
        "int8": {"top1_agreement": 0.97, "perplexity_rel_diff": 0.03},
    }


def test_train_rows(quick):
    (row,) = quick[1]["train"]
    assert row["shape"] == "tiny" and row["steps"] == 2 and row["batch_size"] == 4
    assert row["tokens_per_s"] > 0 and row["step_ms_mean"] > 0 and math.isfinite(row["last_loss"])


# --------------------------------------------------------------------------- failures
def test_parity_failure_exits_1(tiny_artifact, tiny_model_dir, imdb_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.THRESHOLDS, "fp32", {"top5_identical": 1.5, "perplexity_rel_diff": -1.0})
    code = run(bench_args("parity", tiny_artifact, tiny_model_dir, imdb_dir, tmp_path, "--precisions", "fp32"))
    assert code == 1
    (result,) = json.loads((tmp_path / "parity.json").read_text())["parity"]
    assert not result["passed"] and len(result["failures"]) == 2
    assert "rows" not in json.loads((tmp_path / "parity.json").read_text())


def test_check_flags_each_threshold():
    result = {"chunks": {"rel_diff": 0.02}, "sentences": {"top1_agreement": 0.96, "top5_identical": 1.0}}
    assert len(parity.check("int8", result)) == 1  # top-1 too low; perplexity within 3 %
    assert len(parity.check("fp32", result)) == 1  # perplexity off by 2 %
    result["chunks"]["rel_diff"] = float("nan")
    assert len(parity.check("fp16", result)) == 2  # a NaN never passes


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "/nonexistent/export"], "model folder not found"),
        (["--lengths", "512"], "no --lengths fit"),
        (["--engines", "pytorch,deniro_rt"], "unknown pytorch"),
        (["--precisions", "fp16"], "has only"),
    ],
)
def test_bad_input_is_one_error_line(tiny_artifact, tiny_model_dir, imdb_dir, tmp_path, capsys, extra, message):
    code = run(bench_args("latency", tiny_artifact, tiny_model_dir, imdb_dir, tmp_path) + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1]


def test_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(BenchConfig):
        if f.name != "command":
            assert "--" + f.name.replace("_", "-") in text
    assert text.count("(default") >= len(fields(BenchConfig)) - 1


def test_an_unknown_command_lists_every_command(capsys):
    """`python -m bench lol` listed parity, latency, throughput, train and all: not load, quant or ray."""
    with pytest.raises(SystemExit):
        run(["lol"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m bench: error: argument command: invalid choice: 'lol' (choose from 'parity', 'latency', "
        "'throughput', 'train', 'all', 'load', 'quant', 'ray')"
    )


def test_every_bench_command_reports_into_a_new_dated_folder_by_default():
    """`python -m bench load` (as the README shows it), `bench ray` and `bench.host` wrote into the committed
    cpu-2core-serve/, cpu-2core-ray/ and cpu-2core-arrays/ by default, replacing the reports the docs quote."""
    from bench import host, load, ray_bench

    dated = BenchConfig().out_dir()  # bench all's: bench/results/<machine>-<date>/
    assert dated.parent == Path(__file__).resolve().parents[1] / "bench" / "results"
    assert not dated.name.startswith("cpu-2core-")
    assert Path(load.parse_args([]).out) == Path(ray_bench.parse_args([]).out) == Path(host.parse_args([]).out) == dated
    assert Path(QuantConfig().out) == dated  # was bench/results/quant under whatever folder it ran from
    assert Path(load.parse_args(["--out", "/tmp/x"]).out) == Path("/tmp/x")  # --out still wins


def test_quant_help_says_what_every_option_does(capsys):
    """`python -m bench quant --help` gave every option a bare "(default: ...)" and nothing else."""
    with pytest.raises(SystemExit):
        run(["quant", "--help"])
    options = capsys.readouterr().out.split("\noptions:\n")[1]
    found = re.finditer(r"^  (--[\w-]+)( [A-Z_]+)?(.*?)(?=^  -|\Z)", options, re.M | re.S)
    entries = {m[1]: " ".join(m[3].split()) for m in found}
    assert len(entries) == len(dataclasses.fields(QuantConfig))  # every field (-h, --help aside)
    for flag, text in entries.items():
        assert text and not text.startswith("(default"), (flag, text)
    assert entries["--speed-model"].endswith("(default: --model)")  # not "(default: None)"


def test_quick_values_yield_to_explicit_flags():
    cfg = parse_args(["throughput", "--quick", "--throughput-sentences", "100"])
    assert cfg.quick and cfg.throughput_sentences == 100 and cfg.latency_samples == 8
    assert parse_args(["throughput"]).throughput_sentences == 10000


# --------------------------------------------------------------------------- pieces
def test_workload_buckets_are_seeded_and_in_range(tiny_artifact, imdb_texts):
    tokenizer = load_tokenizer(tiny_artifact)

    def make(seed):
        return build_workload(
            imdb_texts["test"],
            tokenizer,
            [16, 64],
            20,
            seed,
            "[MASK]",  # noqa: E731
            "This is a great [MASK]!",
        )

    work = make(0)
    assert work.prompt == "This is a great [MASK]!" and set(work.buckets) == {16, 64}
    for n, texts in work.buckets.items():
        assert len(texts) == 20 and len(set(texts)) == 20
        for text in texts:
            assert text.count("[MASK]") == 1 and "<br" not in text
            assert 3 * n // 4 <= len(tokenizer.encode(text).ids) <= n
    assert make(0).buckets == work.buckets and make(1).buckets != work.buckets


def test_compare_sentences_against_a_known_reference():
    rng = np.random.default_rng(0)
    reference = np.log(rng.dirichlet(np.ones(50), size=8)).astype(np.float32)  # [8, 50]
    ids = np.argsort(-reference, axis=1)[:, :5]
    logprobs = np.take_along_axis(reference, ids, axis=1).astype(np.float64)
    assert parity.compare_sentences(reference, ids, logprobs) == {
        "sentences": 8,
        "top1_agreement": 1.0,
        "top5_identical": 1.0,
        "max_abs_logprob_diff": 0.0,
    }
    swapped = ids.copy()
    swapped[0, [3, 4]] = swapped[0, [4, 3]]
    logprobs[1, 0] += 0.5
    got = parity.compare_sentences(reference, swapped, logprobs)
    assert got["top1_agreement"] == 1.0 and got["top5_identical"] == 7 / 8
    gap = abs(float(reference[0, ids[0, 3]]) - float(reference[0, ids[0, 4]]))
    assert got["max_abs_logprob_diff"] == pytest.approx(max(0.5, gap))


def test_fill_results_one_text_and_many():
    one = [{"score": 0.5, "token": 7}, {"score": 0.25, "token": 3}]
    pred = from_fill_results(one, 1, 2)
    assert isinstance(pred, Prediction) and pred.ids.tolist() == [[7, 3]]
    assert np.allclose(pred.logprobs, np.log([[0.5, 0.25]]))
    assert from_fill_results([one, one], 2, 2).ids.shape == (2, 2)


def test_speedups_pair_same_length_and_batch():
    def row(engine, batch, p50=None, sps=None):
        return {
            "engine": engine,
            "precision": "fp32",
            "provider": "x",
            "batch": batch,
            "length": 16,
            "latency": p50 and {"p50_ms": p50},
            "throughput": sps and {"sentences_per_s": sps},
        }

    rows = [
        row("pytorch-card", 1, p50=10.0, sps=100.0),
        row("pytorch-batched", 64, sps=400.0),
        row("deniro_rt", 1, p50=2.0),
        row("deniro_rt", 64, sps=800.0),
    ]
    got = {(s["metric"], s["versus"]): s["speedup"] for s in report.speedups(rows)}
    assert got == {
        ("latency", "pytorch-card/fp32"): 5.0,
        ("throughput", "pytorch-card/fp32"): 8.0,
        ("throughput", "pytorch-batched/fp32"): 2.0,
    }


def test_train_bench_loops_by_name_and_a_clear_error_for_others():
    from bench.train_bench import LOOPS, LoopOptions, main, pick_loops

    assert pick_loops("device,compiled", compile=False) == [LoopOptions(masking="device"), LoopOptions(compile=True)]
    assert pick_loops("before,host,device", compile=True)[-1] == LOOPS["compiled"]  # --compile adds it once
    assert pick_loops("compiled", compile=True) == [LOOPS["compiled"]]
    loops = "before, host, device, head-rows, compiled, compiled-head-rows, graphs"
    unknown = rf"^--loops: unknown loop fast; choose from {loops}$"
    with pytest.raises(DeniroError, match=unknown):
        pick_loops("device,fast", compile=False)
    with pytest.raises(DeniroError, match=r"^--loops: no loop given; choose"):
        main(["--loops", ",", "--shapes", "tiny"])
    with pytest.raises(DeniroError, match=r"^--shapes: unknown shape huge; choose from deniro, minilm, mini, tiny$"):
        main(["--shapes", "tiny,huge"])
    with pytest.raises(DeniroError, match=r"^--steps must be at least 1, got 0$"):  # was a ZeroDivisionError a row
        main(["--shapes", "tiny", "--steps", "0"])


def bench_shape_failing_when_compiled(error: BaseException):
    """A stand-in for bench.train_bench.bench_shape: 1,000 tokens/s, or `error` for a compiled loop."""

    def fake_bench_shape(shape, steps, warmup, batch_size, chunk_size, precision, device, loop):
        if loop.compile:
            raise error
        return {"shape": shape, "tokens_per_s": 1000.0, **dataclasses.asdict(loop)}

    return fake_bench_shape


def test_train_bench_a_failing_loop_keeps_the_other_rows(monkeypatch):
    import bench.train_bench as tb

    monkeypatch.setattr(tb, "bench_shape", bench_shape_failing_when_compiled(RuntimeError("no C compiler")))
    result = tb.compare_loops(["tiny"], 2, 1, 0, None, None, "bf16", tb.pick_loops("device,compiled", False))
    failed = [r for r in result["rows"] if "error" in r]
    assert len(result["rows"]) == 4 and len(failed) == 2
    assert failed[0]["error"] == "RuntimeError: no C compiler" and failed[0]["loop"] == "auto-mask/auto-adamw/compiled"
    assert result["summary"]["tiny"] == {
        "median_tokens_per_s": {"device-mask/auto-adamw": 1000.0, "auto-mask/auto-adamw/compiled": None},
        "ratio_to_first": {"device-mask/auto-adamw": 1.0, "auto-mask/auto-adamw/compiled": None},
    }


def test_train_bench_json_keeps_the_finished_rows_when_a_time_limit_cuts_the_run(monkeypatch, tmp_path):
    """--json is rewritten after every row: a run killed mid-way (a GPU lease's limit) keeps what it measured."""
    import bench.train_bench as tb

    # the KeyboardInterrupt stands for the kill: nothing after the first compiled loop runs
    monkeypatch.setattr(tb, "bench_shape", bench_shape_failing_when_compiled(KeyboardInterrupt()))
    out = tmp_path / "loop.json"
    with pytest.raises(KeyboardInterrupt):
        tb.main(["--shapes", "tiny,mini", "--loops", "device,head-rows,compiled", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [r["loop"] for r in saved["rows"]] == ["device-mask/auto-adamw", "device-mask/auto-adamw/head-rows-0.2"]
    assert saved["summary"]["tiny"]["ratio_to_first"]["device-mask/auto-adamw/head-rows-0.2"] == 1.0
    assert saved["args"]["loops"] == "device,head-rows,compiled" and not list(tmp_path.glob(".*"))


def test_train_bench_waits_for_the_device_every_10_steps_as_train_does(monkeypatch):
    """The loop probe reads the loss (a device wait) after each warm-up step and then every SYNC_EVERY steps,
    so a loop whose host runs ahead of the device is timed as train/'s loop pays it."""
    import train.loop
    from bench import train_bench as tb

    waits = []

    class Loss:
        def __init__(self, step):
            self.step = step

        def __float__(self):
            waits.append(self.step)
            return 1.0

    steps_done = iter(range(100))
    monkeypatch.setattr(train.loop, "micro_batch", lambda *args: None)
    monkeypatch.setattr(train.loop, "train_step", lambda *args: Loss(next(steps_done)))
    run = tb.TrainRun(
        None, tb.SyntheticVocab(10), type("Acc", (), {"num_processes": 1, "process_index": 0}), *[None] * 5
    )
    times, loss = tb.time_steps(run, steps=25, warmup=3, desc="t")
    assert waits == [0, 1, 2, 12, 22, 27] and len(times) == 25 and loss == 1.0
    assert times[:10] == [times[0]] * 10 and times[20:] == [times[20]] * 5  # a window's steps share its mean


def test_rounds_interleave_the_engines_and_report_each_rows_median_round(tiny_artifact, imdb_dir, tmp_path, capsys):
    from bench.run import median_rounds

    def row(engine, per_s, p50):
        key = {"engine": engine, "precision": "fp32", "provider": "cpu", "batch": 4, "length": 16}
        return {**key, "throughput": {"sentences_per_s": per_s, "sentences": 8}, "latency": {"p50_ms": p50}}

    rounds = [[row("a", 10.0, 3.0), row("b", 5.0, 1.0)], [row("a", 30.0, 1.0)], [row("a", 20.0, 2.0)]]
    a = median_rounds(rounds)[0]
    assert a["throughput"] == {"sentences_per_s": 20.0, "sentences": 8, "rounds": [10.0, 30.0, 20.0]}
    assert a["latency"] == {"p50_ms": 2.0, "rounds": [3.0, 1.0, 2.0]}
    assert median_rounds(rounds)[1]["throughput"]["rounds"] == [5.0]  # b ran once: its one round
    assert median_rounds(rounds[:1]) == rounds[0]
    args = ["throughput", "--quick", "--device", "cpu", "--model", str(tiny_artifact), "--dataset", str(imdb_dir)]
    args += ["--engines", "deniro_rt,deniro_rt-model", "--precisions", "fp32", "--lengths", "16", "--out"]
    assert run([*args, str(tmp_path), "--rounds", "2"]) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert len(rows) == 2 and all(len(r["throughput"]["rounds"]) == 2 for r in rows)
    assert all(r["throughput"]["sentences_per_s"] in r["throughput"]["rounds"] for r in rows)
    assert run([*args, str(tmp_path / "zero"), "--rounds", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: --rounds must be at least 1, got 0"


@pytest.mark.parametrize(
    "flag, value, error",
    [
        ("--top-k", "0", "--top-k must be at least 1, got 0"),
        ("--warmup", "-1", "--warmup must be at least 0, got -1"),
        # before the check: "no text of about 16 tokens in the dataset; drop 16 from --lengths"
        ("--latency-samples", "0", "--latency-samples must be at least 1, got 0"),
        ("--throughput-seconds", "0", "--throughput-seconds must be above 0, got 0.0"),
    ],
)
def test_bench_counts_out_of_range_fail_before_any_work(flag, value, error, tmp_path, capsys):
    assert run(["latency", "--quick", "--device", "cpu", "--out", str(tmp_path / "out"), flag, value]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {error}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["latency", "load", "quant", "ray"])
def test_an_out_that_cannot_hold_the_reports_fails_before_any_work(command, tmp_path, capsys):
    """--out a file (or below one) was an OSError traceback when the reports were written, after the run."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    extra = ["--quick", "--device", "cpu"] if command == "latency" else []
    assert run([command, *extra, "--out", str(notes)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --out {notes} exists and is a file; pass a folder"
    assert run([command, *extra, "--out", str(notes / "reports")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --out {notes / 'reports'}: {notes} is a file, not a folder; pass another --out"
    )
    assert notes.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("command", ["latency", "load", "quant", "ray"])
def test_ctrl_c_is_one_line_and_writes_no_report(command, tmp_path, capsys, monkeypatch):
    """Ctrl-C was a KeyboardInterrupt traceback."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module = {"latency": "bench.run", "load": "bench.load", "quant": "bench.quant", "ray": "bench.ray_bench"}[command]
    monkeypatch.setattr(f"{module}.main", interrupted)
    assert run([command, "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "interrupted: no report written (a benchmark writes its reports when it has run to the end)"
    )
    assert not (tmp_path / "out").exists()


def test_a_damaged_artifact_fails_before_any_engine_runs(tiny_artifact, imdb_dir, tmp_path, capsys, monkeypatch):
    """A cut fast.onnx was onnx's DecodeError from inside the parity check (bf16 on OpenVINO), or the runtime's
    error after the PyTorch side had run."""
    monkeypatch.setattr("bench.run.load_text_splits", lambda *a, **k: pytest.fail("ran before the artifact check"))
    damaged = shutil.copytree(tiny_artifact, tmp_path / "damaged")
    (damaged / "fast.onnx").write_bytes((damaged / "fast.onnx").read_bytes()[:500])
    args = ["parity", "--quick", "--device", "cpu", "--model", str(damaged), "--dataset", str(imdb_dir)]
    assert run([*args, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"error: {damaged / 'fast.onnx'} is corrupted or was replaced (sha256 ")
    assert not (tmp_path / "out").exists()


def test_host_padding_is_that_of_the_graph_runs_the_timed_calls_made(tiny_artifact, imdb_texts):
    """The padding column of host_us: each timed call sorts and splits only its own `batch` texts (the bucket
    cycled), under the runtime's token budget. It was computed over the whole bucket sorted at once, without
    the budget: 10x too low at 16 tokens, batch 64 on the shipped model (0.012 for calls that pad 0.12)."""
    from bench.run import host_us
    from deniro_rt import FillMask

    tokenizer, fm = load_tokenizer(tiny_artifact), FillMask(str(tiny_artifact), device="cpu", precision="fp32")
    work = build_workload(imdb_texts["test"], tokenizer, [64], 40, 0, "[MASK]", "This is a great [MASK]!")
    texts, batch, n = work.buckets[64], 32, 100
    cycled = [texts[i % len(texts)] for i in range(n)]
    shapes = [
        f["input_ids"].shape for i in range(0, n, batch) for f in fm.prepared_feeds(cycled[i : i + batch], 5, batch)[0]
    ]
    measured = 1 - sum(work.tokens[64][i % len(texts)] for i in range(n)) / sum(r * c for r, c in shapes)
    assert max(r * c for r, c in shapes) <= fm.token_budget < batch * 64  # the budget splits these calls
    row = {"precision": "fp32", "provider": str(fm.provider), "batch": batch, "length": 64, "latency": None}
    rows = [{**row, "engine": e, "throughput": {"sentences_per_s": 100.0, "sentences": n}} for e in OURS]
    assert host_us(rows, work)[0]["padding_fraction"] == pytest.approx(measured)


def test_load_rows_report_the_cores_the_load_generator_itself_used():
    """bench load's client shares the cores with the server; each row says how many it kept busy (CPU seconds
    of the client process over the timed window), so a client-bound row can be told from a server-bound one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.load import Cell, drive, encode_requests, run_async, summarize

    class Busy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the server under test

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        tally, elapsed = run_async(drive(port, encode_requests(["a [MASK] ."], port), 2, 200, 30.0))
    finally:
        server.shutdown()
    assert tally.statuses == {"200": 200} and 0 < tally.client_cpu_s
    row = summarize("batched", 2, [Cell(tally, elapsed, 200.0, 100.0, {"+Inf": 100.0})] * 2)
    assert row["client_cpu_cores"] == pytest.approx(tally.client_cpu_s / elapsed)


def test_load_header_names_the_device_the_servers_ran_on():
    """bench load's header said device cpu even when --device auto/cuda served from the GPU."""
    from bench.load import served_device

    cpu = {"batched": {"provider": "CPUExecutionProvider"}, "hf-pipeline": {"provider": "torch-cpu"}}
    assert served_device(cpu) == "cpu"
    assert served_device({**cpu, "batched": {"provider": "CUDAExecutionProvider"}}) == "cuda"


def test_the_prompts_experiment_prints_its_json_and_writes_no_report(monkeypatch, capsys):
    """experiments/prompts.py wrote the committed bench/results/cpu-2core-minilm/prompts.json by default; its
    JSON goes to stdout now, as the other experiments scripts' does (experiments/README.md)."""
    import importlib.util

    import transformers

    root = Path(__file__).resolve().parents[1]
    committed = root / "bench/results/cpu-2core-minilm/prompts.json"
    before = (committed.read_bytes(), committed.stat().st_mtime_ns)
    spec = importlib.util.spec_from_file_location("prompts_experiment", root / "experiments/prompts.py")
    prompts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prompts)
    answer = [{"token_str": "movie", "score": 0.5}]

    class FakeFillMask:  # the script's artifacts are git-ignored scratch: stand-ins with one answer
        def __init__(self, folder, device, precision):
            pass

        def fill(self, texts, top_k):
            return [answer for _ in texts]

    monkeypatch.setattr(prompts.deniro_rt, "FillMask", FakeFillMask)
    transformers.pipeline  # noqa: B018 - the lazy import puts another module object in sys.modules
    fake_pipeline = lambda *args, **kwargs: lambda text, top_k: answer  # noqa: E731
    monkeypatch.setattr(sys.modules["transformers"], "pipeline", fake_pipeline)
    prompts.main([])
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompts"] == prompts.PROMPTS and len(printed["results"]) == 4
    assert all(r == {p: answer for p in prompts.PROMPTS} for r in printed["results"].values())
    assert (committed.read_bytes(), committed.stat().st_mtime_ns) == before


def test_train_bench_ctrl_c_is_one_line(tmp_path, ctrl_c_while_importing):
    """python -m bench.train_bench ran main without a line for Ctrl-C: while torch imported (seconds) or a
    comparison ran (minutes) it was a KeyboardInterrupt traceback."""
    argv = ["--shapes", "tiny", "--rounds", "1", "--steps", "1", "--warmup", "0", "--json", str(tmp_path / "t.json")]
    code, err = ctrl_c_while_importing("torch", "bench.train_bench:run", argv)
    line = "interrupted: --json holds the rows finished so far (rewritten after each); without it none are kept"
    assert (code, err.strip().splitlines()[-1:]) == (130, [line]), err[-3000:]
    assert "Traceback" not in err


def test_train_bench_json_that_is_a_folder_is_refused_before_any_loop(tmp_path, capsys):
    """--json is written after the first row: a folder there lost that row; refused up front
    (deniro_rt.files.check_output_file, as train.shrink's --output)."""
    from bench.train_bench import main

    expected = f"--json {tmp_path} is a folder; pass a path for the JSON file"
    with pytest.raises(DeniroError, match=f"^{re.escape(expected)}$"):
        main(["--shapes", "tiny", "--json", str(tmp_path)])
