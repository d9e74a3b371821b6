"""The batched discriminator (heads as grouped convolutions, real and fake through the backbone
together) against the reference path: one head, one input at a time."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402

from nitro_edge.training.config import load_config  # noqa: E402
from nitro_edge.training.heads import HeadPool, run_heads  # noqa: E402
from nitro_edge.training.train import train  # noqa: E402

PROMPTS = "a red circle at the top left\na blue square in the centre\n"


def config(tmp_path, teacher, out, **settings):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    small = dict(pool_size=60, teacher_steps=2, checkpoint_every=3, sample_every=100, ema_decay=0.9, batch_size=3)
    return load_config(
        None, {"teacher": str(teacher), "prompts": str(prompts), "output": str(out), **small, **settings}
    )


def _pool():
    torch.manual_seed(0)
    pool = HeadPool([8, 16], [8, 4], (10, 500), pool_size=48, width=8)
    for p in pool.parameters():  # GroupNorm starts at (1, 0): move it so its weights are checked too
        p.data.add_(0.1 * torch.randn_like(p))
    return pool


@pytest.mark.parametrize("rows", [(3, 3, 3), (3, 1, 2)])
def test_run_heads_equals_each_head_on_its_input_with_the_same_gradients(rows):
    pool = _pool()
    level0 = [i for i, s in enumerate(pool.slots) if s.level == 0 and s.task == "local_cond"]
    groups = [level0[0:2], level0[2:4], level0[4:6]]  # three inputs, two heads each
    xs = [torch.randn(n, 8, 4, 4, requires_grad=True) for n in rows]
    batched = run_heads(pool, list(zip(xs, groups)))
    loss = sum((y * torch.arange(1.0, y.numel() + 1).view_as(y)).sum() for y in batched)
    grads = torch.autograd.grad(loss, [*xs, *pool.parameters()], allow_unused=True)
    reference = [torch.cat([pool.heads[i](x) for i in ids], dim=1) for x, ids in zip(xs, groups)]
    loss_ref = sum((y * torch.arange(1.0, y.numel() + 1).view_as(y)).sum() for y in reference)
    grads_ref = torch.autograd.grad(loss_ref, [*xs, *pool.parameters()], allow_unused=True)
    for y, r in zip(batched, reference):
        assert y.shape == r.shape
        torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-5)
    touched = 0
    for g, r in zip(grads, grads_ref):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
            touched += 1
    assert touched == len(xs) + 6 * len(list(pool.heads[0].parameters()))  # inputs and the six heads only


def test_run_heads_takes_groups_of_unequal_size():
    pool = _pool()
    level1 = [i for i, s in enumerate(pool.slots) if s.level == 1 and s.task == "global_cond"]
    jobs = [(torch.randn(2, 16, 4, 4), level1[:1]), (torch.randn(2, 16, 4, 4), level1[1:4])]
    for (x, ids), y in zip(jobs, run_heads(pool, jobs)):
        torch.testing.assert_close(y, torch.cat([pool.heads[i](x) for i in ids], dim=1), rtol=1e-5, atol=1e-5)


def test_a_batched_adversarial_run_matches_the_reference_run(tiny_source, tmp_path):
    """Three adversarial steps (k drawn from 1..4, refresh every step, the R1 branch on) batched and
    unbatched: the same student, EMA and heads to float tolerance."""
    teacher = tiny_source("sd15")
    common = dict(max_steps=3, first_stage_steps=0, refine_starts=[0, 0, 0, 0], refresh_rate=0.05, r1_weight=0.1)
    for name, batched in (("batched", True), ("reference", False)):
        train(config(tmp_path, teacher, tmp_path / name, batched_discriminator=batched, **common), progress=False)
    # Adam divides each gradient by its own running scale, so where a gradient is ~0 a float-level
    # difference between the two paths can move a weight by up to a learning rate either way: the
    # check is that almost every weight agrees to 1e-5 and none is off by more than the three steps' largest move.
    resolved = json.loads((tmp_path / "batched" / "config.json").read_text())
    for part, lr in (
        ("student", resolved["lr_student"]),
        ("ema", resolved["lr_student"]),
        ("heads", resolved["lr_heads"]),
    ):
        a = load_file(str(tmp_path / f"batched/checkpoints/step_00000003/{part}.safetensors"))
        b = load_file(str(tmp_path / f"reference/checkpoints/step_00000003/{part}.safetensors"))
        assert a.keys() == b.keys()
        differ = sum(int((a[k] - b[k]).abs().gt(1e-5).sum()) for k in a)
        assert differ <= 0.01 * sum(a[k].numel() for k in a), part
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 2 * 3 * lr, part  # Adam: |step| < 2 lr here
