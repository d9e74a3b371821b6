"""A diffusers SD1.5 / SD2.1 / SDXL pipeline folder written as one file in the original (LDM) layout
that A1111, ComfyUI and stable-diffusion.cpp read: the UNet under model.diffusion_model., the VAE under
first_stage_model., CLIP under cond_stage_model.transformer. (SD1.5) or conditioner.embedders.0.
(SDXL), OpenCLIP under cond_stage_model.model. (SD2.x, with the unused last layer SD2 files carry) or
conditioner.embedders.1.model. (SDXL). The inverse of nitro_edge.models.single_file (which reads such
files with diffusers' converters); the benchmark hands peers the same weights through it, and the
tests round-trip the tiny models.
"""

import json
from pathlib import Path

from nitro_edge._lazy import require

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(state: dict, config: dict) -> dict:
    lpb = config["layers_per_block"]
    attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out = {}
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    for key, value in state.items():
        parts = key.split(".")
        module = next((m for m in top if key.startswith(m + ".")), None)
        if module is not None:
            new = top[module] + key[len(module) :]
        elif parts[0] == "down_blocks":
            b, kind, j = int(parts[1]), parts[2], int(parts[3])
            tail = ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{b * (lpb + 1) + j + 1}.0.{_resnet(tail)}"
            elif kind == "attentions":
                new = f"input_blocks.{b * (lpb + 1) + j + 1}.1.{tail}"
            else:  # downsamplers.0.conv.*
                new = f"input_blocks.{(b + 1) * (lpb + 1)}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            kind, j, tail = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * j}.{_resnet(tail)}" if kind == "resnets" else f"middle_block.1.{tail}"
        elif parts[0] == "up_blocks":
            b, kind, j = int(parts[1]), parts[2], int(parts[3])
            tail = ".".join(parts[4:])
            if kind == "resnets":
                new = f"output_blocks.{b * (lpb + 1) + j}.0.{_resnet(tail)}"
            elif kind == "attentions":
                new = f"output_blocks.{b * (lpb + 1) + j}.1.{tail}"
            else:  # upsamplers.0.conv.*
                new = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if attn[b] else 1}.conv.{parts[-1]}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def _resnet(tail: str) -> str:
    name, _, rest = tail.partition(".")
    return f"{RESNET.get(name, name)}.{rest}"


def vae_to_ldm(state: dict, config: dict) -> dict:
    n = len(config["up_block_types"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = key
        for half in ("encoder", "decoder"):
            new = new.replace(f"{half}.conv_norm_out", f"{half}.norm_out")
        if ".mid_block.attentions.0." in key:
            half, _, tail = key.partition(".mid_block.attentions.0.")
            module, _, param = tail.rpartition(".")
            new = f"{half}.mid.attn_1.{attention[module]}.{param}"
            if value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention is 1x1 convolutions
        elif ".mid_block.resnets." in key:
            half, _, tail = key.partition(".mid_block.resnets.")
            j, _, rest = tail.partition(".")
            new = f"{half}.mid.block_{int(j) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        elif key.startswith("encoder.down_blocks."):
            parts = key.split(".")
            i, kind = int(parts[2]), parts[3]
            new = (
                f"encoder.down.{i}.block.{parts[4]}." + ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                if kind == "resnets"
                else f"encoder.down.{i}.downsample.conv.{parts[-1]}"
            )
        elif key.startswith("decoder.up_blocks."):
            parts = key.split(".")
            i, kind = n - 1 - int(parts[2]), parts[3]
            new = (
                f"decoder.up.{i}.block.{parts[4]}." + ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                if kind == "resnets"
                else f"decoder.up.{i}.upsample.conv.{parts[-1]}"
            )
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items() if not k.endswith("position_ids")}


def clip_to_openclip(state: dict, prefix: str, extra_layer: bool) -> dict:
    """HF CLIP text weights as OpenCLIP's (fused in_proj, resblocks, ln_final, text_projection)."""
    torch = require("torch", "torch")
    out = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
    }
    hidden = out[prefix + "token_embedding.weight"].shape[1]
    out[prefix + "text_projection"] = (
        state["text_projection.weight"].T.contiguous() if "text_projection.weight" in state else torch.eye(hidden)
    )
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for i in layers + ([len(layers)] if extra_layer else []):
        src = f"text_model.encoder.layers.{min(i, layers[-1])}."  # SD2 files carry one more layer, unused
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def write(folder: Path, out: Path) -> Path:
    """Write the diffusers pipeline `folder` as one single-file checkpoint at `out`, in the original layout."""
    require("torch", "torch")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    sdxl = (folder / "text_encoder_2").is_dir()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    state = {**unet_to_ldm(unet.state_dict(), dict(unet.config)), **vae_to_ldm(vae.state_dict(), dict(vae.config))}
    te = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
    if sdxl:
        te2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").state_dict()
        state |= clip_to_ldm(te, "conditioner.embedders.0.transformer.")
        state |= clip_to_openclip(te2, "conditioner.embedders.1.model.", extra_layer=False)
    elif json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_act"] == "gelu":  # SD2.x
        state |= clip_to_openclip(te, "cond_stage_model.model.", extra_layer=True)
    else:
        state |= clip_to_ldm(te, "cond_stage_model.transformer.")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
