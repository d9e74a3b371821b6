"""Training end to end on tiny teachers: resume exactness, cache, CLI, and two processes over gloo."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402

from nitro_edge.training.config import load_config  # noqa: E402
from nitro_edge.training.train import train  # noqa: E402

PROMPTS = "a red circle at the top left\na blue square in the centre\na green triangle at the bottom right\n"
SMALL = {
    "pool_size": 60,
    "teacher_steps": 2,
    "checkpoint_every": 1,
    "sample_every": 2,
    "keep_checkpoints": 5,
    "refine_starts": [0, 1],
    "r1_weight": 0.1,
    "ema_decay": 0.9,
}


def config(tmp_path, teacher, out, **extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    return load_config(None, {"teacher": str(teacher), "prompts": str(prompts), "output": str(out), **SMALL, **extra})


def test_resume_continues_exactly_as_the_uninterrupted_run(tiny_source, tmp_path):
    teacher = tiny_source("sd15")
    train(config(tmp_path, teacher, tmp_path / "a", max_steps=3), progress=False)
    train(config(tmp_path, teacher, tmp_path / "b", max_steps=2), progress=False)
    assert json.loads((tmp_path / "b/checkpoints/step_00000002/state.json").read_text())["step"] == 2
    train(config(tmp_path, teacher, tmp_path / "b", max_steps=3), progress=False)  # resumes at step 2
    for name in ("student", "ema", "heads"):
        a = load_file(str(tmp_path / f"a/checkpoints/step_00000003/{name}.safetensors"))
        b = load_file(str(tmp_path / f"b/checkpoints/step_00000003/{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    start = load_file(str(teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(tmp_path / "a/checkpoints/step_00000003/student.safetensors"))
    assert any(not torch.equal(start[k], trained[k]) for k in start), "the student did not move"
    assert (tmp_path / "a/samples/step_00000002.png").is_file()
    assert any((tmp_path / "a/logs").iterdir())


def test_teacher_cache_is_resumable_and_trains(tiny_source, tmp_path):
    from nitro_edge.training.plan import precompute
    from nitro_edge.training.teacher import TeacherCache

    cfg = config(tmp_path, tiny_source("sdxl"), tmp_path / "run", max_steps=2, teacher_cache=str(tmp_path / "cache"))
    precompute(cfg, total=3, shard_size=2)
    cache = TeacherCache(tmp_path / "cache")
    assert len(cache) == 3 and sorted(p.name for p in (tmp_path / "cache").glob("shard_*")) == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    first = cache.get(0)["x0"].clone()
    (tmp_path / "cache" / "shard_00001.safetensors").unlink()  # an interrupted precompute...
    precompute(cfg, total=3, shard_size=2)  # ...resumes without redoing shard 0
    assert torch.equal(TeacherCache(tmp_path / "cache").get(0)["x0"], first)
    assert set(first.shape) == {4, 8}
    student = train(cfg, progress=False)
    assert (student / "model_index.json").is_file()


def test_cli_dry_run_train_and_export(tiny_source, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    cli = [sys.executable, "-m", "nitro_edge.cli.main"]
    common = ["--teacher", str(tiny_source("sdxl")), "--prompts", str(prompts), "--output", str(tmp_path / "run")]
    r = subprocess.run([*cli, "train", *common, "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    # Every candidate of every (t*, task, level) slot trains each step by default.
    assert plan["heads"] == 480 and plan["heads_trained_per_step"] == 480 and plan["refreshed_per_step"] == 5
    # The auto defaults, resolved for this teacher and budget (rules in training/config.py).
    max_steps = plan["max_steps"]
    first = round(0.75 * max_steps)
    assert plan["stages"]["first_stage_steps"] == first
    assert plan["stages"]["adversarial_steps"] == max_steps - first
    # The student's step counts over the run: one step throughout by default.
    assert plan["stages"]["student_steps"] == [{"from_step": 0, "to_step": max_steps, "k": "1"}]
    width = 32  # the tiny UNet's widest block (nitro_edge/tiny.py)
    assert plan["resolved"]["lr_first_stage"] == pytest.approx(3e-4 * 64 / width)
    assert plan["resolved"]["lr_student"] == pytest.approx(plan["resolved"]["lr_first_stage"] / 60)
    assert plan["shift"] == 1000 and plan["resolved"]["refine_starts"] == [0]
    r = subprocess.run(
        [*cli, "train", *common, "--dry-run", "--set", "heads_per_slot=1", "--set", "refine_starts=[0, 2, 4, 6]"],
        capture_output=True,
        text=True,
    )
    other = json.loads(r.stdout)
    assert other["heads_trained_per_step"] == 480 // plan["candidates_per_slot"], r.stderr
    assert [p["k"] for p in other["stages"]["student_steps"]] == ["1", "1-2", "1-3", "1-4"]
    assert not (tmp_path / "run").exists()
    r = subprocess.run(
        [
            *cli,
            "train",
            *common,
            "--max-steps",
            "2",
            "--set",
            "pool_size=60",
            "--set",
            "teacher_steps=2",
            "--set",
            "shift=500",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    bundle = tmp_path / "bundle"
    r = subprocess.run(
        [*cli, "export", str(tmp_path / "run" / "student"), "-o", str(bundle)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["sampler"]["shift"] == 500 and manifest["sampler"]["shift_source"] == "scheduler_config"


RANK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from nitro_edge.training.config import load_config
    from nitro_edge.training.train import train
    cfg = load_config(None, json.loads(sys.argv[1]))
    train(cfg, progress=False)
""")


@pytest.mark.slow  # two processes over gloo
def test_two_processes_gloo_train_and_the_checkpoint_exports(tiny_source, tmp_path):
    cfg = config(tmp_path, tiny_source("sd15"), tmp_path / "run", max_steps=2, checkpoint_every=2)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [*torchrun, str(script), json.dumps(cfg.to_dict())], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run/checkpoints/step_00000002/student.safetensors").is_file()
    from nitro_edge.export import export_bundle

    bundle = export_bundle(tmp_path / "run" / "student", tmp_path / "bundle")
    assert (bundle / "manifest.json").is_file()


@pytest.mark.slow  # a training child process; the options' logic runs in the default tier
def test_accumulation_bf16_checkpointing_and_local_only_tasks_run(tiny_source, tmp_path):
    """The systems options together on CPU, in their own process (accelerate's precision is
    process-wide): they must train and move the student."""
    cfg = config(
        tmp_path,
        tiny_source("sd15"),
        tmp_path / "run",
        max_steps=2,
        gradient_accumulation=2,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        loss="non_saturating",
        tasks=["local_cond", "local_uncond"],
        pool_size=24,
    )
    script = tmp_path / "run_one.py"
    script.write_text(RANK_SCRIPT)
    r = subprocess.run([sys.executable, str(script), json.dumps(cfg.to_dict())], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    start = load_file(str(tiny_source("sd15") / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(tmp_path / "run/checkpoints/step_00000002/student.safetensors"))
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    assert (tmp_path / "run" / "student" / "unet").is_dir()
