"""The shapes recipe end to end at its quick size: teacher, cache, first stage, adversarial stage,
scores over seeds, and the install step that `make default-model` runs (into a temporary folder)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

import nitro_edge  # noqa: E402


@pytest.mark.slow  # minutes: the whole recipe in a subprocess (.ci/wheel-smoke runs it too, from the wheel)
def test_quick_recipe_runs_to_the_end_and_installs_the_model(tmp_path):
    out, model = tmp_path / "shapes", tmp_path / "model"
    cmd = [sys.executable, "-m", "nitro_edge.training.recipes.shapes", "--out", str(out), "--size", "quick"]
    cmd += ["--no-ablations", "--workers", "1", "--install-default", str(model)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = {row["model"]: row for row in result["rows"]}
    assert set(rows) == {
        "teacher 25 steps",
        "teacher 1 step",
        "student 1 step: first stage",
        "student 2 steps: first stage",
        "student 4 steps: first stage",
        "student 1 step: NitroFusion (full)",
        "student 2 steps: NitroFusion (full)",
        "student 4 steps: NitroFusion (full)",
    }
    for row in rows.values():
        assert 0 <= row["adherence"] <= 1 and row["fd_to_teacher"] >= 0 and len(row["per_seed"]) == 1
    assert result["budget"] == {"first_stage_steps": 2, "adversarial_steps": 2, "batch": 16}
    # The adversarial run started from the first stage's student and ran the adversarial stage only.
    config = json.loads((out / "runs" / "NitroFusion-seed0" / "config.json").read_text())
    assert config["student_unet"].endswith("first-stage-seed0/student/unet/diffusion_pytorch_model.safetensors")
    assert config["first_stage_steps"] == 0 and config["shift"] == 1000
    diagnostics = json.loads((out / "runs" / "NitroFusion-seed0" / "diagnostics.json").read_text())
    assert diagnostics["step"] == 2 and diagnostics["per_timestep"]
    assert sum(diagnostics["state_share"].values()) == pytest.approx(1)
    assert set(result["diagnostics_share"]) == {"NitroFusion (full)"}
    assert (out / "grid.png").is_file() and "| teacher 25 steps |" in (out / "results.md").read_text()
    # The installed model: fp16 weights, a card with the table, and it generates.
    card = (model / "README.md").read_text()
    assert "| student 1 step: NitroFusion (full) |" in card and "first stage" in card
    images = nitro_edge.load(model, backend="torch").generate("a red circle at the top left", output="numpy")
    assert images.shape == (1, 64, 64, 3)
