"""benchmarks/gpu_train.py: at tiny size on the CPU here; the real SDXL run where a CUDA GPU is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_train.py"


def test_the_gpu_benchmark_runs_at_tiny_size_on_cpu(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(tmp_path),
            "--tiny",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--accumulation",
            "2",
            "--skip-search",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["images_per_iteration"] for row in rows] == [1, 10]
    assert all(row["s_per_iteration"] > 0 and row["device"] == "cpu" for row in rows)
    assert "| row | images / iteration |" in r.stdout
    assert not any(
        (tmp_path / name / "checkpoints").exists() for name in ("run-b1-a1", "run-b5-a2")
    )  # stopped before saving


@pytest.mark.gpu
def test_the_gpu_benchmark_at_sdxl_scale(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--steps", "2"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["peak_gpu_gib"] > 0 and rows[1]["images_per_iteration"] == 100
