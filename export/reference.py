"""The torch reference an export is held to: each component's parity inputs (from a real sampling
run), torch's outputs on them, torch's images, and calibration inputs for int8 activations. Computed once
with the whole pipeline loaded, then the modules are released before any conversion starts."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np

from nitro_edge.sampler import Sampler, initial_noise
from nitro_edge.sources import Source
from nitro_edge.specs import COMPONENTS, Component, ComponentSpec, ModelDims, component_specs

PARITY_PROMPTS = ("a red circle at the top left", "a photograph of an astronaut riding a horse")
PARITY_SEED = 0
ACTIVATIONS_QUANTISED = ("int8-hybrid", "int8-act")  # the precisions that need calibration inputs
CALIBRATION_PROMPTS = (
    "a red circle at the top left",
    "a blue square in the centre",
    "a portrait photo of an old man",
    "a watercolour landscape with mountains",
    "a cat sitting on a sofa",
    "a city street at night, neon lights",
    "a bowl of fruit on a wooden table",
    "an astronaut riding a horse",
)


@dataclass
class Reference:
    dims: ModelDims
    tokenizers: list
    specs: dict[str, ComponentSpec]
    inputs: dict[str, dict[str, np.ndarray]]  # per component: the parity inputs (batch 2)
    outputs: dict[str, dict[str, np.ndarray]]  # per component: what torch returned on them
    images: np.ndarray  # torch's images for PARITY_PROMPTS at PARITY_SEED, one step
    calibration: dict[str, list[dict[str, np.ndarray]]]  # per component: batch-1 inputs (int8-hybrid/-act only)

    def replay(self, name: str) -> Component:
        """A component that gives torch's outputs on the parity inputs (the only inputs it gets)."""
        outputs = self.outputs[name]
        return lambda **arrays: outputs

    def example(self, name: str) -> dict[str, np.ndarray]:
        """Batch 1 of the parity inputs: what a target traces with (the batch axis is dynamic)."""
        return {k: v[:1] for k, v in self.inputs[name].items()}


def reference_run(src: Source, height: int | None, width: int | None, precision: str) -> Reference:
    """Run the whole pipeline once in torch and record what the gate compares against."""
    from nitro_edge.models.loading import load_modules
    from nitro_edge.models.wrappers import as_component

    dims, tokenizers, modules = load_modules(src, height, width)
    specs = component_specs(dims)
    torch_components = {n: as_component(modules[n], specs[n]) for n in COMPONENTS[dims.architecture]}
    sampler = Sampler(dims=dims, params=src.params, tokenizers=tokenizers, components=torch_components, backend="torch")
    inputs = component_inputs(sampler, list(PARITY_PROMPTS))
    calibration = calibration_inputs(sampler) if precision in ACTIVATIONS_QUANTISED else {}
    images = sampler.generate(list(PARITY_PROMPTS), steps=1, seed=PARITY_SEED, output="numpy")
    outputs = {n: torch_components[n](**inputs[n]) for n in torch_components}
    del torch_components, sampler, modules
    gc.collect()
    return Reference(dims, tokenizers, specs, inputs, outputs, images, calibration)


def component_inputs(
    sampler: Sampler, prompts: list[str], seed: int = PARITY_SEED, step: int = 0, steps: int = 1
) -> dict[str, dict[str, np.ndarray]]:
    """Real inputs of each component for `prompts` at one step of a sampling run."""
    ids = [tok(prompts) for tok in sampler.tokenizers]
    inputs = {"text_encoder": {"input_ids": ids[0]}}
    if len(ids) > 1:
        inputs["text_encoder_2"] = {"input_ids": ids[1]}
    cond = sampler.encode(prompts)
    _, sample = initial_noise(seed, (len(prompts), *sampler.dims.latent_shape))
    t = sampler.params.generator_timesteps(steps)[step]
    inputs["generator"] = {"sample": sample, "timestep": np.full((len(prompts),), t, dtype=np.int64), **cond}
    inputs["vae_decoder"] = {"latents": sampler.components["generator"](**inputs["generator"])["denoised"]}
    return inputs


def calibration_inputs(sampler: Sampler) -> dict[str, list[dict[str, np.ndarray]]]:
    """Batch-1 inputs from the calibration prompts, at every timestep of a 2-step run."""
    out: dict[str, list] = {}
    for i, prompt in enumerate(CALIBRATION_PROMPTS):
        for step in (0, 1):
            for name, arrays in component_inputs(sampler, [prompt], seed=i, step=step, steps=2).items():
                out.setdefault(name, []).append(arrays)
    return out
