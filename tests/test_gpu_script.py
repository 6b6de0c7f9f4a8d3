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
    for script in ("run.sh", "prepare_carry.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)
    sys.path.insert(0, str(GPU))
    try:
        from steps import steps
    finally:
        sys.path.remove(str(GPU))
    assert steps(step_ms=10.0, budget_s=90, most=4500) == 4500 and steps(20.0, 90, 4500) == 3000
    assert steps(1e6, 90, 4500) == 1 and steps(10.0, 90, 3) == 3


@pytest.mark.slow
def test_dry_run_runs_every_step_on_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(out), "WORK": str(work),
           "DATA": str(SAMPLE), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(GPU / "run.sh"), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    failed = [s for s in summary["steps"] if s["exit"] != "0"]
    assert not failed and len(summary["steps"]) == 10, (failed, done.stdout[-4000:])
    files = sorted(p.name for p in out.iterdir())
    assert files == ["base-bench.md", "base-bench.png", "log.txt", "mini-parity.md", "results.tar.gz", "summary.json"]
    assert all(RETURNABLE.match(name) for name in files)
    assert summary["train_mini_real"]["steps"] == 3 and summary["train_mini_real"]["tokens_per_s"] > 0
    assert summary["train_base_synthetic"][0]["shape"] == "deniro" and summary["mini_parity"][0]["precision"] == "fp32"
    engines = {(r["engine"], r["scope"]) for r in summary["base"]["latency_b1"]}
    assert {("deniro_rt", "e2e"), ("deniro_rt-model", "model"), ("pytorch-card", "e2e")} <= engines
    assert summary["base"]["overhead"] and summary["base"]["throughput_16"]
    checks = summary["cuda_checks"]
    assert checks["placement"]["fp32"]["nodes"]["CPUExecutionProvider"] > 0 and checks["graphs"]["fp32"]["passed"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "bench-base/bench.json" in names and "train-mini.json" in names
    assert not any(n.endswith((".onnx", ".safetensors")) for n in names)
