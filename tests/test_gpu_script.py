"""bench/gpu/run.sh rehearsed on CPU (--dry-run: every step, tiny sizes, the repo's IMDB sample), so no GPU
minute is lost to a Python error, a missing file or a wrong flag. The full rehearsal is slow (minutes)."""
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "bench" / "gpu"
SAMPLE = REPO / "tests" / "data" / "imdb-sample"
RETURNABLE = re.compile(r"^[A-Za-z0-9._-]+$")  # the device tool brings back such names, <= 8 files


def test_scripts_parse_and_size_the_mini_run():
    for script in ("run.sh", "prepare_carry.sh", "sweep.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)
    sys.path.insert(0, str(GPU))
    try:
        from steps import steps
    finally:
        sys.path.remove(str(GPU))
    assert steps(step_ms=10.0, budget_s=90, most=4500) == 4500 and steps(20.0, 90, 4500) == 3000
    assert steps(1e6, 90, 4500) == 1 and steps(10.0, 90, 3) == 3


def _dry_run(tmp_path, script: str) -> tuple[Path, subprocess.CompletedProcess]:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(out), "WORK": str(work),
           "DATA": str(SAMPLE), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(GPU / script), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_dry_run_runs_every_step_on_cpu(tmp_path):
    out, done = _dry_run(tmp_path, "run.sh")
    summary = json.loads((out / "summary.json").read_text())
    failed = [s for s in summary["steps"] if s["exit"] != "0"]
    assert not failed and len(summary["steps"]) == 12, (failed, done.stdout[-4000:])
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


def _weights_come_back(out: Path, work: Path) -> None:
    """carry.py unpack-model joins the parts (sha256 checked) into the trained model, fp16-rounded."""
    import torch
    from safetensors.torch import load_file

    subprocess.run([sys.executable, str(GPU / "carry.py"), "unpack-model", str(out), str(work / "minilm-init"),
                    str(work / "back")], check=True, capture_output=True)
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
