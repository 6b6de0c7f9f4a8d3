"""bench/gpu/run.sh rehearsed on CPU (--dry-run: every step, tiny sizes, the repo's IMDB sample), so no GPU
minute is lost to a Python error, a missing file or a wrong flag. The full rehearsal is slow (minutes). The
device calls' plan (bench/gpu/calls.py) is checked fast: every call fits the transfer at the repo's size now."""

import importlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "bench" / "gpu"
SAMPLE = REPO / "tests" / "data" / "imdb-sample"
RETURNABLE = re.compile(r"^[A-Za-z0-9._-]+$")  # the device tool brings back such names, <= 8 files


def _gpu_module(name: str):
    """A script module of bench/gpu (not a package: its scripts import each other by name)."""
    sys.path.insert(0, str(GPU))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(GPU))


def test_scripts_parse_and_size_the_mini_run():
    for script in ("run.sh", "prepare_carry.sh", "sweep.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)
    steps = _gpu_module("steps").steps
    assert steps(step_ms=10.0, budget_s=90, most=4500) == 4500 and steps(20.0, 90, 4500) == 3000
    assert steps(1e6, 90, 4500) == 1 and steps(10.0, 90, 3) == 3


def test_every_planned_call_fits_the_transfer_at_the_current_repo_size():
    """The prepared folders' sizes where they are here (nominal ones elsewhere: CI has none) + the repo now."""
    calls = _gpu_module("calls")
    here = calls.measured()
    assert set(here) == set(calls.NOMINAL_BYTES)
    sizes = {path: size if size is not None else calls.NOMINAL_BYTES[path] for path, size in here.items()}
    lines, fits = calls.report(calls.repo_bytes(), sizes)
    assert fits, "\n".join(lines)
    assert calls.MARGIN >= 1_000_000 and set(calls.PLANS) == {"issue23", "issue21"}
    assert all(plan[:3] == calls.STASH for plan in calls.PLANS.values())  # every lease stashes the same first
    assert calls.PLANS["issue23"][-1].carry == () and "STAGES=loop" in calls.PLANS["issue23"][-1].command
    _, fits = calls.report(calls.LIMIT - calls.MARGIN - min(calls.NOMINAL_BYTES.values()) + 1, sizes)
    assert not fits  # the check does fail once the repo leaves less than the margin


def test_readme_lists_the_planned_calls():
    """Each plan's calls are in bench/gpu/README.md as `calls.py plan` prints them: carry, timeout, command."""
    calls, readme = _gpu_module("calls"), (GPU / "README.md").read_text()
    for call in calls.CALLS:
        command = call.command.replace("|", "\\|")  # as a markdown table cell holds it
        assert f"`{json.dumps(list(call.carry))}`" in readme and command in readme, call
        assert f"| {call.timeout_s} |" in readme


def test_plan_prints_each_lease_and_refuses_an_unknown_one(capsys):
    calls = _gpu_module("calls")
    assert calls.main(["plan"]) == 0
    printed = [line.split(":", 1)[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["call 1", "call 2", "call 3", "call 3b", "call 4", "call 5"]  # issue 23's, the default
    assert calls.main(["plan", "issue21"]) == 0
    assert "STAGES=baseonnx,arrays" in capsys.readouterr().out.splitlines()[-1]
    assert calls.main(["plan", "issue9"]) == 2
    assert capsys.readouterr().err == "no plan 'issue9': choose one of issue23, issue21\n"


def _fake_payloads(root: Path) -> bytes:
    """The prepared folders in small: ort halves with their sha256, wheels, text, a model cut in 3 parts."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    carry = _gpu_module("carry")
    for folder in (".ortgpu/part1/wheels", ".ortgpu/part2", ".carry/serve/wheels", ".carry/text", ".carry/minilm"):
        (root / folder).mkdir(parents=True)
    (root / ".ortgpu/part1/ort.tar.xz.aa").write_bytes(b"a" * 100)
    (root / ".ortgpu/part2/ort.tar.xz.ab").write_bytes(b"b" * 50)
    (root / ".ortgpu/part2/ort.sha256").write_text(hashlib.sha256(b"a" * 100 + b"b" * 50).hexdigest() + "\n")
    (root / ".ortgpu/part1/wheels/x-1.0-py3-none-any.whl").write_bytes(b"w")
    (root / ".carry/serve/wheels/fastapi-1.0-py3-none-any.whl").write_bytes(b"s")  # deniro_rt serve's, call 1
    (root / ".carry/text/train.jsonl.xz").write_bytes(b"t")
    tensors = {"w": torch.arange(600, dtype=torch.float32), "n": torch.arange(3)}
    save_file(tensors, root / ".carry/minilm" / carry.WEIGHTS)
    (root / ".carry/minilm/config.json").write_text("{}")
    carry.split_init(root / ".carry/minilm", root / ".carry/minilm-parts", part_bytes=500)
    return carry.fp16_bytes(root / ".carry/minilm" / carry.WEIGHTS)


def test_stash_calls_rebuild_the_start_point_and_onnxruntime(tmp_path):
    """calls.py stage lays out calls 1-3; copied into one /tmp as the device does, join-init gives back the fp16
    start point byte for byte; a call left out (or a stale ort half) fails the check here, before any call."""
    calls, carry = _gpu_module("calls"), _gpu_module("carry")
    weights = _fake_payloads(tmp_path)
    assert calls.stage(tmp_path) == [] and calls.join_errors(tmp_path) == []
    device_tmp = tmp_path / "device-tmp"
    for call in calls.CALLS[:3]:
        shutil.copytree(tmp_path / call.carry[0], device_tmp, dirs_exist_ok=True)  # cp -r .carry/callN/. /tmp/
    ortgpu = sorted(p.name for p in (device_tmp / "ortgpu").rglob("*"))
    # install.sh installs /tmp/ortgpu/wheels/*.whl: call 1's serve wheels and call 2's wheels, merged there
    assert ortgpu == ["fastapi-1.0-py3-none-any.whl", "ort.tar.xz.aa", "wheels", "x-1.0-py3-none-any.whl"]
    assert (device_tmp / "carry/text/train.jsonl.xz").is_file()
    carry.join_init(device_tmp / "minilm-parts", device_tmp / "minilm-init")
    assert (device_tmp / "minilm-init" / carry.WEIGHTS).read_bytes() == weights
    assert (device_tmp / "minilm-init/config.json").is_file()
    (device_tmp / "minilm-parts/minilm-fp16.safetensors.02").unlink()
    with pytest.raises(SystemExit, match="do not match sha256"):
        carry.join_init(device_tmp / "minilm-parts", device_tmp / "again")
    shutil.rmtree(tmp_path / ".carry/call3")
    (tmp_path / ".carry/call1/ortgpu/ort.tar.xz.aa").unlink()
    (tmp_path / ".carry/call1/ortgpu/ort.tar.xz.aa").write_bytes(b"stale")
    assert len(calls.join_errors(tmp_path)) == 2


def _dry_run(tmp_path, script: str) -> tuple[Path, subprocess.CompletedProcess]:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "OUT": str(out),
        "WORK": str(work),
        "DATA": str(SAMPLE),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(GPU / script), "--dry-run"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_dry_run_runs_every_step_on_cpu(tmp_path):
    out, done = _dry_run(tmp_path, "run.sh")
    summary = json.loads((out / "summary.json").read_text())
    failed = [s for s in summary["steps"] if s["exit"] != "0"]
    assert not failed and len(summary["steps"]) == 13, (failed, done.stdout[-4000:])
    assert summary["steps"][1]["step"] == "join minilm start point"
    _start_point_joined_from_parts(tmp_path / "work")
    files = sorted(p.name for p in out.iterdir())
    parts = [f"minilm-fp16.safetensors.{i:02d}" for i in range(3)]
    assert files == ["base-bench.md", "log.txt", *parts, "results.tar.gz", "summary.json"]
    assert len(files) <= 8 and all(RETURNABLE.match(name) for name in files)
    assert all((out / part).stat().st_size <= 16 * 2**20 for part in parts)  # what the device brings back
    assert summary["train_minilm_real"]["steps"] == 2 and summary["train_minilm_real"]["tokens_per_s"] > 0
    assert summary["minilm_pack"]["parts"] == parts and summary["minilm_validation"]["fp32"]["passed"]
    assert summary["train_base_synthetic"][0]["shape"] == "deniro"
    assert summary["minilm_parity"][0]["precision"] == "fp32"
    engines = {(r["engine"], r["scope"]) for r in summary["base"]["latency_b1"]}
    assert {("deniro_rt", "e2e"), ("deniro_rt-model", "model"), ("pytorch-card", "e2e")} <= engines
    assert summary["base"]["overhead"] and summary["base"]["throughput_16"]
    checks = summary["cuda_checks"]
    assert checks["placement"]["fp32"]["nodes"]["CPUExecutionProvider"] > 0 and checks["graphs"]["fp32"]["passed"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert {"bench-base/bench.json", "train-minilm.json", "minilm-onnx/deniro.json"} <= set(names)
    assert not any(n.endswith((".onnx", ".safetensors", ".parquet")) for n in names)
    _weights_come_back(out, tmp_path / "work")


def _start_point_joined_from_parts(work: Path) -> None:
    """The rehearsal cut the fp16 start point as prepare_carry.sh does (2 parts) and trained from the join."""
    parts = sorted(p.name for p in (work / "minilm-parts").glob("minilm-fp16.safetensors.*"))
    assert parts == ["minilm-fp16.safetensors.00", "minilm-fp16.safetensors.01"]
    joined = (work / "minilm-init" / "model.safetensors").read_bytes()
    assert joined == (work / "minilm-fp16" / "model.safetensors").read_bytes()
    assert (work / "minilm-init" / "tokenizer.json").is_file()


def test_init_from_a_trained_model_is_its_fp16_weights_and_files(tmp_path, tiny_model_dir):
    """carry.py init --from: the GPU sweep's start point from a trained model (PRESET=deniro) instead of MiniLM."""
    import torch
    from safetensors.torch import load_file

    script = [sys.executable, str(GPU / "carry.py"), "init", str(tmp_path / "start")]
    subprocess.run(script + ["--from", str(tiny_model_dir)], check=True, capture_output=True)
    trained, start = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "start/model.safetensors")
    assert trained.keys() == start.keys()
    for name, weight in trained.items():
        torch.testing.assert_close(start[name], weight.half(), rtol=0, atol=0)
    assert (tmp_path / "start/config.json").read_text() == (tiny_model_dir / "config.json").read_text()
    missing = subprocess.run(script + ["--from", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 1 and f"--from {tmp_path}: no model.safetensors there" in missing.stderr


def test_unsupervised_text_travels_apart_and_unpacks_beside_train_and_test(tmp_path):
    """carry.py pack-text --splits unsupervised (the sweep's extra MLM text, issue 23) lands in /tmp/carry/text
    beside train/test; unpack-text restores every split it finds, and refuses a folder without train/test."""
    import pyarrow.parquet as pq

    carry = [sys.executable, str(GPU / "carry.py")]
    subprocess.run(carry + ["pack-text", str(SAMPLE), str(tmp_path / "text")], check=True, capture_output=True)
    subprocess.run(
        carry + ["pack-text", str(SAMPLE), str(tmp_path / "text"), "--splits", "unsupervised"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        carry + ["unpack-text", str(tmp_path / "text"), str(tmp_path / "imdb")], check=True, capture_output=True
    )
    for split in ("train", "test", "unsupervised"):
        back = pq.read_table(tmp_path / "imdb" / f"{split}.parquet").column("text").to_pylist()
        assert back == pq.read_table(SAMPLE / f"{split}.parquet").column("text").to_pylist(), split
    (tmp_path / "text" / "test.jsonl.xz").unlink()
    lacking = subprocess.run(
        carry + ["unpack-text", str(tmp_path / "text"), str(tmp_path / "x")], capture_output=True, text=True
    )
    assert lacking.returncode == 1 and "lacks test.jsonl.xz" in lacking.stderr


def _weights_come_back(out: Path, work: Path) -> None:
    """carry.py unpack-model joins the parts (sha256 checked) into the trained model, fp16-rounded."""
    import torch
    from safetensors.torch import load_file

    subprocess.run(
        [
            sys.executable,
            str(GPU / "carry.py"),
            "unpack-model",
            str(out),
            str(work / "minilm-init"),
            str(work / "back"),
        ],
        check=True,
        capture_output=True,
    )
    trained, back = load_file(work / "minilm" / "model.safetensors"), load_file(work / "back" / "model.safetensors")
    assert trained.keys() == back.keys()
    for name, weight in trained.items():
        assert back[name].dtype == torch.float32
        torch.testing.assert_close(back[name], weight.half().float(), rtol=0, atol=0)


@pytest.mark.slow
def test_sweep_dry_run_trains_the_variants_and_returns_the_best(tmp_path):
    out, done = _dry_run(tmp_path, "sweep.sh")
    sweep = json.loads((out / "sweep.json").read_text())
    finished = {name: run["final_perplexity"] for name, run in sweep["runs"].items()}
    assert len(finished) == 3 and all(finished.values()), done.stdout[-3000:]
    assert sweep["best"] == min(finished, key=finished.get) and len(sweep["pack"]["parts"]) == 3
    assert "validation fp32:" in (out / "sweep-log.txt").read_text()
    _start_point_joined_from_parts(tmp_path / "work")


def _stage_dry_run(tmp_path: Path, stages: str) -> tuple[Path, Path]:
    """run.sh --dry-run with STAGES=stages; returns (OUT, WORK)."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "OUT": str(out),
        "WORK": str(work),
        "DATA": str(SAMPLE),
        "HOME": str(tmp_path),
        "STAGES": stages,
    }
    done = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--dry-run"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, work


@pytest.mark.slow
def test_arrays_stage_dry_run(tmp_path):
    """STAGES=baseonnx,arrays (issue 21's lease): the base shape exported, not benched; then the shipped model's
    and the base shape's dicts / columnar / graph-only rows with the host-us table, the B=1 prompt latency,
    pytest -m gpu and the load test, on CPU."""
    out, work = _stage_dry_run(tmp_path, "baseonnx,arrays")
    steps = {s["step"]: s["exit"] for s in json.loads((out / "summary.json").read_text())["steps"]}
    assert steps["export base"] == "0" and not any(name.startswith("bench base") for name in steps), steps
    assert steps["arrays: shipped model, dicts / columnar / graph only"] == "0", steps
    assert steps["arrays: base shape, dicts / columnar / graph only"] == "0", steps
    assert steps["load: 32 and 128 clients"] == "0", steps
    assert steps["arrays: shipped model, B=1 prompt latency"] == "0" and steps["pytest -m gpu"] in ("0", "5"), steps
    report = json.loads((work / "arrays-shipped" / "throughput.json").read_text())
    assert {r["engine"] for r in report["rows"]} == {"deniro_rt", "deniro_rt-arrays", "deniro_rt-model"}
    assert {h["engine"] for h in report["host_us"]} == {"deniro_rt", "deniro_rt-arrays"}
    assert "Host microseconds per sentence" in (work / "arrays-shipped" / "throughput.md").read_text()


@pytest.mark.slow
def test_loop_stage_dry_run(tmp_path):
    """STAGES=loop (issue 23): train/'s loop eager, with --head-rows, and with both it and torch.compile, bf16."""
    out, work = _stage_dry_run(tmp_path, "loop")
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["exit"] for s in summary["steps"]}
    assert steps["loop speed: eager vs compiled, bf16"] == "0", steps
    assert steps["pytest -m gpu: the --head-rows forward and step never wait for the device"] == "0", steps  # skipped
    rows = json.loads((work / "loop.json").read_text())["rows"]
    assert [(r["shape"], r["masking"], r["head_rows"], r["compile"], r["precision"]) for r in rows] == [
        ("tiny", "device", 0.0, False, "bf16"),
        ("tiny", "device", 0.2, False, "bf16"),
        ("tiny", "device", 0.2, True, "bf16"),
    ]
    assert all(r["tokens_per_s"] > 0 and r["last_loss"] > 0 for r in rows)
    assert set(summary["train_loop"]["tiny"]["median_tokens_per_s"]) == {
        "device-mask/auto-adamw",
        "device-mask/auto-adamw/head-rows-0.2",
        "device-mask/auto-adamw/head-rows-0.2/compiled",
    }
