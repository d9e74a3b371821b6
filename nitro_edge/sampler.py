"""The one sampler, written once in numpy over any backend's components.

Noise stream (the contract every implementation reproduces for a seed):
    rng = numpy.random.default_rng(seed)
    first = rng.standard_normal((B, C, H/f, W/f), dtype=numpy.float32)   # initial latents
    then one draw of the same shape before each re-noising between steps.
Explicit `latents` replace the first draw (which is still drawn and discarded, so re-noising
draws do not depend on whether latents were given).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Sequence

import numpy as np

from nitro_edge.errors import Cancelled, InputError
from nitro_edge.schedule import SamplerParams, check_steps
from nitro_edge.specs import Component, ModelDims
from nitro_edge.tokenizer import ClipTokenizer, check_prompts

OUTPUTS = ("pil", "numpy")


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[np.random.Generator, np.ndarray]:
    """The canonical generator for `seed` and its first draw (the initial latents)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    return rng, rng.standard_normal(shape, dtype=np.float32)


class OnDemand:
    """Components loaded when a phase of generation needs them and released after it (memory="low",
    as Apple's reduceMemory): text encoders, then the generator for all its steps, then the decoder,
    so the process holds about the largest component and its activations instead of all of them.
    `load(names)` returns {name: component}; `wrap(name, component)` may wrap each (bench times them).
    Both are attributes a caller may replace (a benchmark counting loads or memory per phase)."""

    def __init__(self, load: Callable[[list[str]], dict], wrap: Callable | None = None, compute: str | None = None):
        self.load, self.wrap, self.compute = load, wrap, compute

    @contextlib.contextmanager
    def use(self, name: str):
        loaded = self.load([name])
        held = _Held(self.wrap(name, loaded[name]) if self.wrap else loaded[name])
        try:
            yield held
        finally:
            held.release()  # the caller's name for it must not keep the session alive either
            del loaded
            gc.collect()


class _Held:
    """A component lent for one phase; released (and unusable) after it."""

    def __init__(self, component: Component):
        self._component = component

    def __call__(self, **arrays):
        if self._component is None:
            raise RuntimeError("this component was released after its phase (memory='low')")
        return self._component(**arrays)

    def release(self) -> None:
        self._component = None


class Sampler:
    """Text to image in 1 to 4 steps with a one-step generator and the shifted LCM schedule.

    `components` are resident ({name: component}) or an OnDemand (loaded per phase).
    generate() may be called from several threads; calls are serialised by one lock, since
    backends differ in whether their sessions are re-entrant.
    """

    def __init__(
        self,
        *,
        dims: ModelDims,
        params: SamplerParams,
        tokenizers: Sequence[ClipTokenizer],
        components: dict[str, Component] | OnDemand,
        backend: str,
        precision: str = "fp32",
    ):
        self.dims = dims
        self.precision = precision  # the bundle artifacts it runs (fp32 for a source folder)
        self.params = params
        self.tokenizers = list(tokenizers)
        self.components = components
        self.backend = backend
        self._alphas = params.schedule.alphas_cumprod()
        self._lock = threading.Lock()

    @property
    def architecture(self) -> str:
        return self.dims.architecture

    @property
    def compute(self) -> str | None:
        """The arithmetic the backend runs the artifacts in, where it says (OpenVINO: f32, bf16)."""
        if isinstance(self.components, OnDemand):
            return self.components.compute
        found = sorted({c.compute for c in self.components.values() if getattr(c, "compute", None)})
        return "/".join(found) or None

    @property
    def memory(self) -> str:
        return "low" if isinstance(self.components, OnDemand) else "normal"

    def _use(self, name: str):
        """A context giving component `name`: the resident one, or one loaded for this phase."""
        if isinstance(self.components, OnDemand):
            return self.components.use(name)
        return contextlib.nullcontext(self.components[name])

    def encode(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """The generator's text conditioning for a batch of prompts."""
        names = ["text_encoder"] + [f"text_encoder_{i + 2}" for i in range(len(self.tokenizers) - 1)]
        outs = []
        for name, tok in zip(names, self.tokenizers):
            with self._use(name) as encoder:
                outs.append(encoder(input_ids=tok(prompts)))
        cond = {"encoder_hidden_states": np.concatenate([o["encoder_hidden_states"] for o in outs], axis=-1)}
        if self.architecture == "sdxl":
            cond["text_embeds"] = outs[-1]["text_embeds"]
            cond["time_ids"] = self.dims.time_ids(len(prompts))
        return cond

    def generate(
        self,
        prompts: str | Sequence[str],
        steps: int = 1,
        seed: int = 0,
        latents: np.ndarray | None = None,
        output: str = "pil",
        progress: Callable[[int, int], bool | None] | None = None,
    ):
        """Images for `prompts`: a list of PIL images, or float32 (B, H, W, 3) in [0, 1] for "numpy".

        `progress(done, total)` is called after each generator step; returning False cancels
        (raises nitro_edge.errors.Cancelled, before the decoder runs).
        """
        prompts = check_prompts(prompts)
        check_steps(steps, self.params.original_inference_steps)
        if output not in OUTPUTS:
            raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
        shape = (len(prompts), *self.dims.latent_shape)
        rng, sample = initial_noise(seed, shape)
        if latents is not None:
            sample = self._check_latents(latents, shape)
        with self._lock:
            images = self._run(prompts, steps, rng, sample, progress)
        images = images.transpose(0, 2, 3, 1)
        if output == "numpy":
            return images
        from PIL import Image

        return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]

    def _run(self, prompts, steps, rng, sample, progress) -> np.ndarray:
        cond = self.encode(prompts)
        lcm_t = self.params.lcm_timesteps(steps)
        gen_t = self.params.generator_timesteps(steps)
        batch = len(prompts)
        with self._use("generator") as generator:
            for i, t in enumerate(gen_t):
                denoised = generator(sample=sample, timestep=np.full((batch,), t, dtype=np.int64), **cond)["denoised"]
                if i + 1 < steps:
                    # Re-noise toward the next, unshifted, LCM timestep.
                    noise = rng.standard_normal(sample.shape, dtype=np.float32)
                    a = self._alphas[lcm_t[i + 1]]
                    sample = (np.sqrt(a) * denoised + np.sqrt(1 - a) * noise).astype(np.float32)
                else:
                    sample = denoised
                if progress is not None and progress(i + 1, steps) is False:
                    raise Cancelled(f"generation cancelled by the progress callback after step {i + 1} of {steps}")
        with self._use("vae_decoder") as decoder:
            return decoder(latents=sample)["image"]

    @staticmethod
    def _check_latents(latents: np.ndarray, shape: tuple) -> np.ndarray:
        if not isinstance(latents, np.ndarray) or latents.shape != shape:
            got = getattr(latents, "shape", type(latents).__name__)
            raise InputError(f"latents must be a numpy array of shape {shape}, got {got}")
        if latents.dtype != np.float32:  # a silent cast would hide float64 noise or integer data
            raise InputError(f"latents must be float32 (the noise stream's dtype), got {latents.dtype}")
        if not np.all(np.isfinite(latents)):
            raise InputError("latents contain NaN or Inf")
        return latents
