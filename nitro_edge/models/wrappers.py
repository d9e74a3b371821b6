"""The three wrappers: text encoder, generator (UNet plus the LCM x0 step), VAE decoder.

Export traces exactly these modules, the torch backend runs them and training builds its student
from the generator, so every artifact is compared against the module it came from. The generator
folds the scheduler's x0 conversion and LCM's boundary scalings (taken from the sampler's
schedule) into the graph; the decoder folds the latent scaling and the [0, 1] output range.
"""

from __future__ import annotations

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.errors import SourceError
from nitro_edge.schedule import SamplerParams
from nitro_edge.specs import ComponentSpec, checked

torch = require("torch", "torch")
nn = torch.nn


class TextEncoder(nn.Module):
    """CLIP text tower -> the hidden states the generator is conditioned on (and SDXL's pooled)."""

    def __init__(self, model, penultimate: bool, text_embeds: bool):
        super().__init__()
        self.model, self.penultimate, self.text_embeds = model, penultimate, text_embeds

    def forward(self, input_ids):
        out = self.model(input_ids, output_hidden_states=self.penultimate, return_dict=True)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        return (hidden, out.text_embeds) if self.text_embeds else (hidden,)


class Generator(nn.Module):
    """UNet plus the LCM x0 step at the (shifted) timestep it is given: returns the denoised latent."""

    def __init__(self, unet, params: SamplerParams, sdxl: bool):
        super().__init__()
        self.unet, self.sdxl = unet, sdxl
        self.v_prediction = params.schedule.prediction_type == "v_prediction"
        alphas = torch.from_numpy(params.schedule.alphas_cumprod())
        c_skip, c_out = params.boundary_scalings(np.arange(len(alphas)))
        self.register_buffer("sqrt_alpha", alphas.sqrt(), persistent=False)
        self.register_buffer("sqrt_beta", (1 - alphas).sqrt(), persistent=False)
        self.register_buffer("c_skip", torch.from_numpy(c_skip), persistent=False)
        self.register_buffer("c_out", torch.from_numpy(c_out), persistent=False)

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        model_out = self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]
        return (self.denoise(sample, timestep, model_out),)

    def denoise(self, sample, timestep, model_out):
        """The LCM step to x0 at `timestep`, with the boundary-condition scalings."""
        a = self.sqrt_alpha[timestep].view(-1, 1, 1, 1)
        s = self.sqrt_beta[timestep].view(-1, 1, 1, 1)
        if self.v_prediction:
            x0 = a * sample - s * model_out
        else:
            x0 = (sample - s * model_out) / a
        c_skip = self.c_skip[timestep].view(-1, 1, 1, 1)
        c_out = self.c_out[timestep].view(-1, 1, 1, 1)
        return c_out * x0 + c_skip * sample


class VaeDecoder(nn.Module):
    """VAE decoder from generator latents to an image in [0, 1] (NCHW)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scaling, self.shift = latent_scaling(vae.config)

    def forward(self, latents):
        image = self.vae.decode(latents / self.scaling + self.shift, return_dict=False)[0]
        return ((image / 2 + 0.5).clamp(0, 1),)


def latent_scaling(config) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE config. A missing or zero scaling factor is an error:
    decoding with a wrong one gives washed-out or saturated images without any other sign."""
    scaling = getattr(config, "scaling_factor", None)
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool) or scaling <= 0:
        raise SourceError(f"the VAE config needs a positive scaling_factor, got {scaling!r}")
    shift = getattr(config, "shift_factor", None)
    return float(scaling), float(shift or 0.0)  # shift_factor: absent or None in SD-family VAEs


def as_component(module, spec: ComponentSpec):
    """A torch module as a component: named numpy arrays in, named numpy arrays out."""

    def call(**arrays: np.ndarray) -> dict:
        args = [torch.from_numpy(np.ascontiguousarray(arrays[t.name])) for t in spec.inputs]
        with torch.inference_mode():
            outs = module(*args)
        return {t.name: o.float().numpy() for t, o in zip(spec.outputs, outs)}

    return checked(spec, call)
