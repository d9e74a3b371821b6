"""The discriminator's backbone: the frozen teacher UNet's encoder and mid-block.

It returns one feature map per level: conv_in, every down-block residual (resnets and
downsamplers), and the mid-block output; 10 levels for SDXL, 13 for SD1.5/SD2.1.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderBackbone(nn.Module):
    """Runs only the encoder half of a diffusers UNet2DConditionModel (no up blocks)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        unet.requires_grad_(False).eval()

    @property
    def channels(self) -> list[int]:
        """Channels of each level's feature map, in order."""
        cfg = self.unet.config
        chans = [cfg.block_out_channels[0]]
        for i, ch in enumerate(cfg.block_out_channels):
            chans += [ch] * cfg.layers_per_block
            if i < len(cfg.block_out_channels) - 1:
                chans.append(ch)
        return chans + [cfg.block_out_channels[-1]]

    @property
    def strides(self) -> list[int]:
        """Downscale of each level's map relative to the latent."""
        cfg = self.unet.config
        strides, s = [1], 1
        for i in range(len(cfg.block_out_channels)):
            strides += [s] * cfg.layers_per_block
            if i < len(cfg.block_out_channels) - 1:
                s *= 2
                strides.append(s)
        return strides + [s]

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None) -> list[torch.Tensor]:
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs or {})
        if aug is not None:
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = unet.process_encoder_hidden_states(encoder_hidden_states, added_cond_kwargs or {})
        x = unet.conv_in(sample)
        features = [x]
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=hidden)
            else:
                x, res = block(hidden_states=x, temb=emb)
            features.extend(res)
        if getattr(unet.mid_block, "has_cross_attention", False):
            x = unet.mid_block(x, emb, encoder_hidden_states=hidden)
        else:
            x = unet.mid_block(x, emb)
        features.append(x)
        return features
