"""Training components on tiny real models: backbone levels, pool, refresh, losses, config, data."""

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from nitro_edge.errors import InputError  # noqa: E402
from nitro_edge.training.backbone import EncoderBackbone  # noqa: E402
from nitro_edge.training.config import TrainConfig, load_config  # noqa: E402
from nitro_edge.training.data import PromptSampler, read_prompts  # noqa: E402
from nitro_edge.training.heads import TASKS, HeadPool, reset_optimizer_state  # noqa: E402
from nitro_edge.training.losses import discriminator_loss, generator_loss  # noqa: E402


def _fake_unet_config(block_out_channels, layers_per_block):
    config = SimpleNamespace(block_out_channels=block_out_channels, layers_per_block=layers_per_block)
    return SimpleNamespace(unet=SimpleNamespace(config=config))


@pytest.mark.parametrize(
    "channels, layers, levels",
    [
        ((320, 640, 1280), 2, 10),  # SDXL: the 10 levels of METHOD.md
        ((320, 640, 1280, 1280), 2, 13),  # SD1.5 / SD2.1
    ],
)
def test_level_count_for_real_layouts(channels, layers, levels):
    layout = EncoderBackbone.channels.fget(_fake_unet_config(channels, layers))
    strides = EncoderBackbone.strides.fget(_fake_unet_config(channels, layers))
    assert len(layout) == len(strides) == levels
    if levels == 10:
        assert layout == [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280]
        assert [128 // s for s in strides] == [128, 128, 128, 64, 64, 64, 32, 32, 32, 32]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_backbone_features_equal_the_unet_internals(arch, tiny_source):
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_source(arch) / "unet")
    backbone = EncoderBackbone(unet)
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)} if arch == "sdxl" else None
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in (*unet.down_blocks, unet.mid_block)]
    with torch.no_grad():
        unet(sample, t, hidden, added_cond_kwargs=added)
        for h in hooks:
            h.remove()
        feats = backbone(sample, t, hidden, added)
    expected = [unet.conv_in(sample)] + [r for out in captured[:-1] for r in out[1]] + [captured[-1]]
    assert len(feats) == len(expected) == len(backbone.channels)
    for f, e, ch, s in zip(feats, expected, backbone.channels, backbone.strides):
        assert f.shape == e.shape and f.shape[1] == ch and f.shape[-1] == 8 // s
        torch.testing.assert_close(f, e)


def test_pool_partition_and_selection():
    channels, sizes = [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280], [4] * 10
    pool = HeadPool(channels, sizes, (10, 250, 500, 750), pool_size=480, width=4)
    assert len(pool) == 480 and pool.candidates == 4
    per = {}
    for slot in pool.slots:
        per[(slot.timestep, slot.task)] = per.get((slot.timestep, slot.task), 0) + 1
    assert set(per.values()) == {40} and len(per) == 12
    for i, slot in enumerate(pool.slots):
        assert pool.index(slot.timestep, slot.task, slot.level, i % 4) == i
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 4, 6):
        per_sample, picks = pool.select_all(gen, batch)
        assert len(per_sample) == batch and set(picks) == set(per_sample)
        counts = [per_sample.count(t) for t in set(per_sample)]
        assert max(counts) - min(counts) <= 1  # balanced over the timesteps present
        for t, by_task in picks.items():
            assert set(by_task) == set(TASKS)
            for task, ids in by_task.items():
                assert [pool.slots[i].level for i in ids] == list(range(10))
                assert all(pool.slots[i].timestep == t and pool.slots[i].task == task for i in ids)
    assert set(pool.select_all(gen, 8)[0]) == {10, 250, 500, 750}
    same = pool.select_all(torch.Generator().manual_seed(3), 5), pool.select_all(torch.Generator().manual_seed(3), 5)
    assert same[0] == same[1]


def test_refresh_reinitialises_heads_and_resets_their_optimizer_state():
    pool = HeadPool([8, 16], [8, 4], (10, 500), pool_size=24, width=4)
    opt = torch.optim.AdamW(pool.parameters(), lr=1e-2)
    for p in pool.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    before = [[p.detach().clone() for p in h.parameters()] for h in pool.heads]
    reborn = pool.refresh(0.1, torch.Generator().manual_seed(0))
    assert len(reborn) == round(0.1 * 24)
    for i in reborn:
        reset_optimizer_state(opt, pool.heads[i])
        assert all(p not in opt.state for p in pool.heads[i].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[i], pool.heads[i].parameters()))
    kept = next(i for i in range(len(pool)) if i not in reborn)
    assert all(p in opt.state for p in pool.heads[kept].parameters())
    assert all(torch.equal(a, b) for a, b in zip(before[kept], pool.heads[kept].parameters()))
    assert pool.refresh(0.0, torch.Generator()) == []


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_loss_signs(kind):
    hi, lo = torch.full((4,), 2.0), torch.full((4,), -2.0)
    assert discriminator_loss(hi, lo, kind) < discriminator_loss(lo, hi, kind)  # right is cheaper
    assert generator_loss(hi, kind) < generator_loss(lo, kind)  # fooling is cheaper
    fake = torch.zeros(4, requires_grad=True)
    generator_loss(fake, kind).backward()
    assert (fake.grad < 0).all()  # descending the loss raises the fake logits


def test_config_from_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\nloss: non_saturating\ndisc_timesteps: [10, 500]\n")
    cfg = load_config(path, {"max_steps": 9}, ["pool_size=24", "tf32=false", "refine_starts=[0, 5]"])
    assert (cfg.max_steps, cfg.loss, cfg.disc_timesteps, cfg.pool_size, cfg.tf32, cfg.refine_starts) == (
        9,
        "non_saturating",
        [10, 500],
        24,
        False,
        [0, 5],
    )
    with pytest.raises(InputError, match="unknown config keys"):
        load_config(None, sets=["nope=1"])
    with pytest.raises(InputError, match="pool_size must be int, got 'many'"):
        load_config(None, sets=["pool_size=many"])
    with pytest.raises(InputError, match="--set expects key=value"):
        load_config(None, sets=["pool_size"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"loss": "wgan"}, "loss must be one of"),
        ({"refresh_rate": 1.5}, "refresh_rate"),
        ({"refine_starts": [5]}, "refine_starts must start at 0"),
        ({"pool_size": 3}, "too small"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"resolution": -64}, "resolution must be 0"),
        ({"disc_timesteps": ["a"]}, r"disc_timesteps must be list\[int\], got \['a'\]"),
    ],
)
def test_impossible_configs_fail_before_loading(change, match):
    with pytest.raises(InputError, match=match):
        TrainConfig(**change)  # checked when built, before anything loads


def test_steps_for_draws_every_k_the_schedule_has_opened():
    from nitro_edge.training.config import k_schedule, refine_schedule
    from nitro_edge.training.student import steps_for

    starts = refine_schedule(300, 400)
    assert refine_schedule(400, 400) == [0]  # no adversarial stage: one step
    gen = torch.Generator().manual_seed(0)
    drawn = {step: {steps_for(step, starts, gen) for _ in range(200)} for step in (0, 299, 300, 325, 399)}
    assert drawn == {0: {1}, 299: {1}, 300: {1, 2}, 325: {1, 2, 3}, 399: {1, 2, 3, 4}}
    assert k_schedule(starts, 400) == [
        {"from_step": 0, "to_step": 300, "k": "1"},
        {"from_step": 300, "to_step": 325, "k": "1-2"},
        {"from_step": 325, "to_step": 350, "k": "1-3"},
        {"from_step": 350, "to_step": 400, "k": "1-4"},
    ]


def test_auto_defaults_follow_the_teacher_and_the_budget():
    """resolve() derives the auto values from the UNet's width and max_steps; explicit values stay."""
    from types import SimpleNamespace

    narrow, wide = SimpleNamespace(block_out_channels=(32, 64)), SimpleNamespace(block_out_channels=(320, 1280))
    cfg = TrainConfig(max_steps=400).resolve(narrow)
    assert (cfg.first_stage_steps, cfg.shift, cfg.refine_starts) == (300, 1000, [0])
    assert TrainConfig(max_steps=400, refine_starts=[0, 10]).resolve(narrow).refine_starts == [0, 10]  # given, kept
    assert cfg.lr_first_stage == pytest.approx(3e-4) and cfg.lr_student == pytest.approx(5e-6)
    assert cfg.ema_decay == pytest.approx(1 - 1 / 20) and cfg.head_width == 32
    big = TrainConfig(max_steps=10_000).resolve(wide)
    assert big.lr_first_stage == pytest.approx(3e-4 * 64 / 1280) and big.ema_decay == pytest.approx(1 - 1 / 500)
    assert big.head_width == 64
    assert TrainConfig(max_steps=40).resolve(narrow).ema_decay == pytest.approx(0.9)  # at least 10 steps
    given = TrainConfig(max_steps=400, first_stage_steps=0, lr_student=1e-5, shift=250, ema_decay=0.99)
    given = given.resolve(narrow)
    assert (given.first_stage_steps, given.lr_student, given.shift, given.ema_decay) == (0, 1e-5, 250, 0.99)
    with_unet = TrainConfig(max_steps=400, student_unet="unet", shift=250).resolve(narrow)
    assert with_unet.first_stage_steps == 0  # a given one-step UNet needs no first stage
    with pytest.raises(InputError, match="shift is required with student_unet"):
        TrainConfig(student_unet="unet")


def test_set_values_are_parsed_against_the_field_types():
    cfg = load_config(
        None,
        sets=[
            "disc_timesteps=[10, 500]",
            "adam_betas=[0, 0.9]",
            "lr_student=1e-5",
            "tasks=[global_cond]",
            "gradient_checkpointing=yes",
        ],
    )
    assert (cfg.disc_timesteps, cfg.adam_betas, cfg.lr_student, cfg.tasks, cfg.gradient_checkpointing) == (
        [10, 500],
        [0.0, 0.9],
        1e-5,
        ["global_cond"],
        True,
    )
    for bad, match in (
        ("disc_timesteps=[a]", r"list\[int\], got '\[a\]'"),
        ("disc_timesteps=[1,", "list"),
        ("max_steps=1.5", "max_steps must be int"),
        ("tf32=maybe", "tf32 must be bool"),
    ):
        with pytest.raises(InputError, match=match):
            load_config(None, sets=[bad])


def test_resolution_multiple_comes_from_the_teacher(tiny_source, tmp_path):
    """The tiny teachers' VAE (8x) and UNet (2 blocks) need multiples of 16, not SD's 64."""
    from nitro_edge.training.plan import plan

    (tmp_path / "p.txt").write_text("a cat\n")
    base = {"teacher": str(tiny_source("sd15")), "prompts": str(tmp_path / "p.txt"), "output": str(tmp_path / "o")}
    assert plan(load_config(None, {**base, "resolution": 96}))["resolution"] == 96
    with pytest.raises(InputError, match="resolution must be a multiple of 16 for this teacher"):
        plan(load_config(None, {**base, "resolution": 100}))


def test_prompt_formats_and_deterministic_order(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "three"}\n{"prompt": "four"}\n')
    assert read_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert read_prompts(tmp_path / "p.jsonl") == ["three", "four"]
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "x.txt").write_text("five\n")
    assert read_prompts(folder) == ["five"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["six", " ", "seven"], "other": [1, 2, 3]}), tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.parquet") == ["six", "seven"]
    with pytest.raises(InputError, match="expected a JSON object with a 'prompt' field"):
        (tmp_path / "bad.jsonl").write_text("[1]\n")
        read_prompts(tmp_path / "bad.jsonl")
    sampler = PromptSampler([str(i) for i in range(10)], seed=1)
    epoch0 = [sampler.batch(s, 2) for s in range(5)]
    assert sorted(p for b in epoch0 for p in b) == [str(i) for i in range(10)]
    assert PromptSampler([str(i) for i in range(10)], seed=1).batch(3, 2) == epoch0[3]
    ranks = [PromptSampler([str(i) for i in range(10)], 1).batch(0, 2, rank=r, world=2) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
