"""The generator as two chunks, for devices that cannot hold (or compile) the whole UNet at once.

Chunk 1 runs the time embedding, the input convolution, the down blocks and the mid block; chunk 2
runs the up blocks, the output layers and the x0 step. Chunk 1 hands chunk 2 the mid-block sample,
the time embedding and every skip connection, under the names `CHUNK_*` below. Both are plain torch
modules built from the generator's own submodules (no weight is copied), so any target can convert
them, and chunk2(chunk1(x)) is the generator's forward pass (tests/test_export_options.py holds
them to it). Chunk 1 is the UNet's encoder half (nitro_edge.models.unet_encoder, shared with the
discriminator backbone); UNet options it does not reproduce are refused when splitting.
"""

from __future__ import annotations

import numpy as np

from nitro_edge._lazy import require
from nitro_edge.models import unet_encoder
from nitro_edge.specs import BATCH, ComponentSpec, TensorSpec

torch = require("torch", "torch")

CHUNK_HIDDEN = "mid_sample"
CHUNK_EMB = "time_emb"
CHUNK_SKIP = "skip_{}"


class GeneratorHead(torch.nn.Module):
    """Chunk 1: generator inputs -> mid-block sample, time embedding, skip connections."""

    def __init__(self, generator):
        super().__init__()
        unet_encoder.check_supported(generator.unet, "the generator cannot be split into chunks")
        self.unet, self.sdxl = generator.unet, generator.sdxl

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        hidden, emb, skips = unet_encoder.encode(self.unet, sample, timestep, encoder_hidden_states, added)
        return (hidden, emb, *skips)


class GeneratorTail(torch.nn.Module):
    """Chunk 2: chunk 1's outputs (and the generator's sample, timestep, text) -> the denoised latent."""

    def __init__(self, generator):
        super().__init__()
        unet_encoder.check_supported(generator.unet, "the generator cannot be split into chunks")
        self.generator = generator

    def forward(self, sample, timestep, encoder_hidden_states, hidden, emb, *skips):
        unet = self.generator.unet
        for block in unet.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            if getattr(block, "has_cross_attention", False):
                hidden = block(
                    hidden_states=hidden,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=encoder_hidden_states,
                )
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        model_out = unet.conv_out(hidden)
        return (self.generator.denoise(sample, timestep, model_out),)


def split_generator(generator, spec: ComponentSpec, example: dict[str, np.ndarray]):
    """(head, head_spec, head_example, tail, tail_spec, tail_example) for a Generator wrapper.

    The chunk specs name chunk 1's outputs; their shapes come from running chunk 1 on `example`.
    """
    head, tail = GeneratorHead(generator).eval(), GeneratorTail(generator).eval()
    with torch.inference_mode():
        outs = head(*(torch.from_numpy(example[t.name]) for t in spec.inputs))
    names = [CHUNK_HIDDEN, CHUNK_EMB, *(CHUNK_SKIP.format(i) for i in range(len(outs) - 2))]
    carried = tuple(TensorSpec(n, "float32", (BATCH, *o.shape[1:])) for n, o in zip(names, outs))
    head_spec = ComponentSpec(f"{spec.name}_chunk1", spec.inputs, carried)
    passed = tuple(t for t in spec.inputs if t.name in ("sample", "timestep", "encoder_hidden_states"))
    tail_spec = ComponentSpec(f"{spec.name}_chunk2", passed + carried, spec.outputs)
    tail_example = {t.name: example[t.name] for t in passed} | {n: o.numpy() for n, o in zip(names, outs)}
    return head, head_spec, dict(example), tail, tail_spec, tail_example
