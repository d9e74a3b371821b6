"""The discriminator's backbone: the frozen teacher UNet's encoder and mid-block.

It returns one feature map per level: conv_in, every down-block residual (resnets and
downsamplers), and the mid-block output; 10 levels for SDXL, 13 for SD1.5/SD2.1. The encoder
half itself is nitro_edge.models.unet_encoder, shared with the Core ML chunk split.
"""

from __future__ import annotations

import torch
from torch import nn

from nitro_edge.models import unet_encoder


class EncoderBackbone(nn.Module):
    """Runs only the encoder half of a diffusers UNet2DConditionModel (no up blocks)."""

    def __init__(self, unet):
        super().__init__()
        unet_encoder.check_supported(unet, "the discriminator backbone")
        self.unet = unet
        unet.requires_grad_(False).eval()

    @property
    def channels(self) -> list[int]:
        """Channels of each level's feature map, in order."""
        return unet_encoder.level_channels(self.unet.config)

    @property
    def strides(self) -> list[int]:
        """Downscale of each level's map relative to the latent."""
        return unet_encoder.level_strides(self.unet.config)

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None) -> list[torch.Tensor]:
        mid, _, skips = unet_encoder.encode(self.unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
        return [*skips, mid]
