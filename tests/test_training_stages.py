"""The first stage (regression onto the teacher's x0) and the adversarial stage's diagnostics."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402

from nitro_edge.training.config import load_config  # noqa: E402
from nitro_edge.training.diagnostics import Diagnostics  # noqa: E402
from nitro_edge.training.train import train  # noqa: E402

PROMPTS = "a red circle at the top left\na blue square in the centre\na green triangle at the bottom right\n"
SMALL = {
    "pool_size": 60,
    "teacher_steps": 2,
    "checkpoint_every": 1,
    "keep_checkpoints": 10,
    "sample_every": 100,
    "ema_decay": 0.9,
    "batch_size": 2,
}


def config(tmp_path, teacher, out, **extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    return load_config(None, {"teacher": str(teacher), "prompts": str(prompts), "output": str(out), **SMALL, **extra})


def test_a_run_resumed_at_the_stage_boundary_matches_the_uninterrupted_run(tiny_source, tmp_path):
    teacher = tiny_source("sd15")
    train(config(tmp_path, teacher, tmp_path / "a", max_steps=4, first_stage_steps=2), progress=False)
    train(config(tmp_path, teacher, tmp_path / "b", max_steps=2, first_stage_steps=2), progress=False)
    train(config(tmp_path, teacher, tmp_path / "b", max_steps=4, first_stage_steps=2), progress=False)
    for name in ("student", "ema", "heads"):
        a = load_file(str(tmp_path / f"a/checkpoints/step_00000004/{name}.safetensors"))
        b = load_file(str(tmp_path / f"b/checkpoints/step_00000004/{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # The heads do not move in the first stage, and do in the adversarial one.
    h1 = load_file(str(tmp_path / "a/checkpoints/step_00000001/heads.safetensors"))
    h2 = load_file(str(tmp_path / "a/checkpoints/step_00000002/heads.safetensors"))
    h4 = load_file(str(tmp_path / "a/checkpoints/step_00000004/heads.safetensors"))
    assert all(torch.equal(h1[k], h2[k]) for k in h1 if k != "__ages__")
    assert any(not torch.equal(h2[k], h4[k]) for k in h2 if k != "__ages__")
    summary = json.loads((tmp_path / "a/checkpoints/step_00000004/diagnostics.json").read_text())
    assert summary["step"] == 4 and summary["window_steps"] == 2
    assert set(summary["per_timestep"]) <= {"10", "250", "500", "750"} and summary["per_timestep"]
    row = next(iter(summary["per_timestep"].values()))
    assert 0 <= row["acc_real"] <= 1 and 0 <= row["acc_fake"] <= 1 and row["loss_d"] > 0


def test_the_first_stage_brings_the_one_step_student_to_the_teacher(tiny_source, tmp_path):
    """Regression onto the cached teacher x0: the one-step student's error on those pairs falls."""
    from nitro_edge.models.loading import load_modules
    from nitro_edge.sources import resolve_source
    from nitro_edge.training.plan import precompute
    from nitro_edge.training.teacher import TeacherCache

    teacher = tiny_source("sd15")
    cfg = config(
        tmp_path,
        teacher,
        tmp_path / "run",
        max_steps=30,
        first_stage_steps=30,
        lr_first_stage=3e-3,
        teacher_cache=str(tmp_path / "cache"),
        batch_size=4,
        checkpoint_every=30,
        shift=1000,
    )
    precompute(cfg, total=8, shard_size=8)
    cache = TeacherCache(tmp_path / "cache")
    items = [cache.get(i) for i in range(8)]

    def error(folder):
        _, _, modules = load_modules(resolve_source(folder, shift=1000))
        gen = modules["generator"]
        with torch.no_grad():
            x0 = gen(
                torch.stack([it["noise"] for it in items]),
                torch.full((8,), 999),
                torch.stack([it["encoder_hidden_states"] for it in items]),
            )[0]
        return float(((x0 - torch.stack([it["x0"] for it in items])) ** 2).mean())

    before = error(teacher)
    after = error(train(cfg, progress=False))
    assert after < 0.5 * before, (before, after)


def _feed(diag, step, real, fake, loss):
    for t in (10, 500):
        diag.observe_discriminator(t, [torch.full((2, 1, 2, 2), real)], [torch.full((2, 1, 2, 2), fake)], loss)
        diag.observe_generator(t, 1.0)
    return diag.end_step(step)


def test_diagnostics_raise_one_alarm_when_the_discriminator_stalls_or_wins():
    stalled = Diagnostics((10, 500), "hinge", window=30)
    lines = [_feed(stalled, s, 0.0, 0.0, 2.0) for s in range(1, 41)]  # logits at 0: no separation
    alarms = [line for line in lines if line]
    assert len(alarms) == 1 and "not learning" in alarms[0] and stalled.state == "stalled"
    assert "lr_heads" in alarms[0]

    won = Diagnostics((10, 500), "hinge", window=30)
    alarms = [line for line in (_feed(won, s, 5.0, -5.0, 0.0) for s in range(1, 41)) if line]
    assert len(alarms) == 1 and "won outright" in alarms[0]
    share = won.summary(40)["state_share"]  # every step counted once, in the verdict it ended in
    assert sum(share.values()) == pytest.approx(1) and share["won"] > 0.5 and share["ok"] == 0 and share["stalled"] == 0

    fine = Diagnostics((10, 500), "hinge", window=30)
    for s in range(1, 41):
        _feed(fine, s, 0.3 if s % 3 else -0.3, -0.3, 1.6)  # right on 2/3 of real, all fake: learning, not won
    assert fine.state == "ok" and not fine.alarms
    summary = fine.summary(40)
    assert summary["per_timestep"]["10"]["acc_fake"] == 1.0 and 0.6 < summary["per_timestep"]["10"]["acc_real"] < 0.7
    assert set(fine.scalars()) >= {"diag/acc_real/t10", "diag/acc_fake/t500", "diag/loss_d/t10", "diag/loss_g/t500"}
    fine.observe_refresh([3, 7])
    assert fine.summary(41)["refreshed_head_age"] == {"mean": 5.0, "min": 3.0, "max": 7.0}


@pytest.mark.parametrize("k", [2, 4])
def test_a_k_step_first_stage_iteration_denoises_the_teachers_x0_renoised_to_the_last_step(tiny_source, k):
    """The pair is consistent: the student's input is the teacher's x0 noised to the k-step grid's
    last timestep (not the student's own earlier steps, whose fresh noise would make the target an
    average), at that step's shifted timestep, held to that x0."""
    import contextlib
    from types import SimpleNamespace

    import diffusers

    from nitro_edge.models.wrappers import Generator
    from nitro_edge.sources import resolve_source
    from nitro_edge.training.first_stage import regression_step

    source = resolve_source(tiny_source("sd15"), shift=1000)
    unet = diffusers.UNet2DConditionModel.from_pretrained(source.path / "unet")
    seen = []
    unet.register_forward_hook(lambda m, args, out: seen.append((args[0].detach().clone(), args[1].clone())))
    alphas = torch.from_numpy(source.params.schedule.alphas_cumprod())
    run = SimpleNamespace(
        student=Generator(unet, source.params, False),
        source=source,
        alphas=alphas,
        acc=SimpleNamespace(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward()),
    )
    torch.manual_seed(0)
    real = torch.randn(3, 4, 8, 8)
    batch = SimpleNamespace(
        noise=torch.randn(3, 4, 8, 8), real=real, cond={"encoder_hidden_states": torch.randn(3, 77, 32)}
    )
    stats = {}
    loss = regression_step(run, batch, k, torch.Generator().manual_seed(1), stats, 1)
    assert len(seen) == 1  # one student call: the last step only
    x, t = seen[0]
    last = int(source.params.lcm_timesteps(k)[-1])
    assert t.tolist() == [int(source.params.generator_timesteps(k)[-1])] * 3
    eps = torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, alphas[last].sqrt() * real + (1 - alphas[last]).sqrt() * eps)
    assert float(loss) > 0 and stats["loss_first_stage/mse"] == pytest.approx(float(loss))
    assert all(p.grad is not None for p in unet.conv_in.parameters())
