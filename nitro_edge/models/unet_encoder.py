"""The encoder half of a diffusers UNet2DConditionModel: time (and SDXL's added) embedding,
conv_in, the down blocks and the mid block, with every skip connection.

Two users: the discriminator backbone (training/backbone.py) reads the skips and the mid-block
output as its feature levels; the Core ML chunk split (export/chunks.py) hands them to the up
blocks in a second package. The forward pass follows diffusers' UNet2DConditionModel.forward for
the features SD1.5, SD2.1 and SDXL use; other UNet options are refused by `check_supported`.
"""

from __future__ import annotations

from nitro_edge.errors import InputError


def check_supported(unet, what: str) -> None:
    """Refuse UNet options this encoder half does not reproduce (class labels, LCM's guidance
    embedding, projected text inputs, centred inputs, other added embeddings)."""
    config = unet.config
    unsupported = {
        "class_embed_type": config.class_embed_type,
        "time_cond_proj_dim": config.time_cond_proj_dim,
        "encoder_hid_dim": config.encoder_hid_dim,
        "center_input_sample": config.center_input_sample or None,
        "addition_embed_type": None
        if config.addition_embed_type in (None, "text_time")
        else config.addition_embed_type,
    }
    found = {k: v for k, v in unsupported.items() if v is not None}
    if found:
        raise InputError(f"{what}: UNet options {found} are not supported")


def time_embedding(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
    """The embedding every resnet reads: the timestep's, plus SDXL's text/size embedding."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {}
    )
    if aug is not None:
        emb = emb + aug
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb


def encode(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
    """(mid-block output, time embedding, skips): skips are conv_in's output and every down-block
    residual in order, as the up blocks consume them in reverse."""
    emb = time_embedding(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
    hidden = unet.conv_in(sample)
    skips = [hidden]
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            hidden, res = block(hidden_states=hidden, temb=emb)
        skips.extend(res)
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            hidden = unet.mid_block(hidden, emb)
    return hidden, emb, skips


def level_channels(unet_config) -> list[int]:
    """Channels of each skip plus the mid block's output, in order (10 levels for SDXL, 13 for SD1.5/2.1)."""
    chans = [unet_config.block_out_channels[0]]
    for i, ch in enumerate(unet_config.block_out_channels):
        chans += [ch] * unet_config.layers_per_block
        if i < len(unet_config.block_out_channels) - 1:
            chans.append(ch)
    return chans + [unet_config.block_out_channels[-1]]


def level_strides(unet_config) -> list[int]:
    """Downscale of each level's map relative to the latent."""
    strides, s = [1], 1
    for i in range(len(unet_config.block_out_channels)):
        strides += [s] * unet_config.layers_per_block
        if i < len(unet_config.block_out_channels) - 1:
            s *= 2
            strides.append(s)
    return strides + [s]
