"""The sampler on the torch backend against diffusers' own pipeline with a timestep-shift LCM scheduler."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import nitro_edge  # noqa: E402
from nitro_edge.sampler import initial_noise  # noqa: E402


class TimestepShiftLCMScheduler(diffusers.LCMScheduler):
    """LCM whose UNet sees t * shifted_timestep / 1000, stepping on the unshifted grid
    (as the NitroFusion README describes its scheduler)."""

    def __init__(self, *args, shifted_timestep: int = 250, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(shifted_timestep=shifted_timestep)

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self.origin_timesteps = self.timesteps.clone()
        self.shifted_timesteps = (
            self.timesteps * self.config.shifted_timestep / self.config.num_train_timesteps
        ).long()
        self.timesteps = self.shifted_timesteps

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        self.timesteps = self.origin_timesteps
        output = super().step(model_output, timestep, sample, generator, return_dict)
        self.timesteps = self.shifted_timesteps
        return output


def shifted_lcm(config, shift):
    """The oracle scheduler from a pipeline's scheduler config. (from_config on the subclass would
    drop LCM's own keys such as original_inference_steps, hidden behind its **kwargs.)"""
    lcm = diffusers.LCMScheduler.from_config(config, original_inference_steps=4)
    accepted = inspect.signature(diffusers.LCMScheduler.__init__).parameters
    init = {k: v for k, v in lcm.config.items() if k in accepted}
    scheduler = TimestepShiftLCMScheduler(**init, shifted_timestep=shift)
    assert scheduler.config.original_inference_steps == 4
    return scheduler


def diffusers_images(path, arch, prompts, steps, shift, seed, monkeypatch, prepare=None):
    """diffusers' own pipeline (after `prepare(pipe)`, e.g. loading a LoRA) on the canonical noise stream."""
    cls = diffusers.StableDiffusionXLPipeline if arch == "sdxl" else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(path)
    if prepare is not None:
        prepare(pipe)
    pipe.scheduler = shifted_lcm(pipe.scheduler.config, shift)
    pipe.set_progress_bar_config(disable=True)
    c = pipe.unet.config
    shape = (len(prompts), c.in_channels, c.sample_size, c.sample_size)
    rng, first = initial_noise(seed, shape)
    # Inject the canonical stream into diffusers' own re-noising draw.
    monkeypatch.setattr(
        diffusers.schedulers.scheduling_lcm,
        "randn_tensor",
        lambda shape, **kw: torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)),
    )
    out = pipe(
        prompts, num_inference_steps=steps, guidance_scale=0.0, latents=torch.from_numpy(first), output_type="np"
    )
    return out.images


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_sampler_reproduces_diffusers(arch, tiny_source, monkeypatch):
    path = tiny_source(arch)
    prompts = ["a red circle at the top left", "a photograph of an astronaut riding a horse"]
    worst = 0.0
    for shift in (250, 500):
        sampler = nitro_edge.load(path, backend="torch", shift=shift)
        for steps in (1, 2, 3, 4):
            ours = sampler.generate(prompts, steps=steps, seed=7, output="numpy")
            ref = diffusers_images(path, arch, prompts, steps, shift, 7, monkeypatch)
            assert ours.shape == ref.shape
            err = float(np.abs(ours - ref).max())
            worst = max(worst, err)
            assert err < 1e-4, f"{arch} shift={shift} steps={steps}: max abs {err}"
    # Images must not be constant: a saturated or blank image would make the check vacuous.
    assert ours.std() > 0.01


def test_timesteps_match_diffusers_lcm():
    from nitro_edge.schedule import NoiseSchedule, SamplerParams

    for shift in (250, 500, 1000):
        params = SamplerParams(NoiseSchedule(), shift=shift)
        for steps in (1, 2, 3, 4):
            sched = TimestepShiftLCMScheduler(
                original_inference_steps=4,
                shifted_timestep=shift,
                beta_schedule="scaled_linear",
                beta_start=0.00085,
                beta_end=0.012,
            )
            sched.set_timesteps(steps)
            assert params.generator_timesteps(steps).tolist() == sched.timesteps.tolist()
            assert params.lcm_timesteps(steps).tolist() == sched.origin_timesteps.tolist()
