"""benchmarks/adversarial_step.py runs and reports every phase for both paths (its figures are
measured by running it alone, not here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "adversarial_step.py"


@pytest.mark.slow  # about a minute: three training setups on the recipe's architecture
def test_the_adversarial_step_benchmark_reports_both_paths(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--steps", "1", "--repeats", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["whole_step_s"]) == {"batched", "reference"} and all(
        v > 0 for v in result["whole_step_s"].values()
    )
    for mode in ("batched", "reference"):
        assert set(result["phase_s"][mode]) == {"student", "backbone", "heads"}
    assert "| batched |" in r.stdout and "cheaper per step" in r.stdout
