"""2x nearest-neighbour upsampling followed by a 3x3 convolution, computed on the low-resolution input.

After a 2x nearest upsampling, each output pixel's 3x3 window covers only 2x2 distinct input pixels:
rows i-1, i for an even output row 2i and rows i, i+1 for an odd one (columns alike). So each of the
four output phases is a 2x2 convolution of the input whose taps are sums of the 3x3 kernel's, and the
phases interleave into the output (a pixel shuffle). The same function, with 16 instead of 36
multiply-adds per input channel and low-resolution pixel. In the SD VAE decoder the three upsampling
convolutions are 695 of its 1240 GFLOP at 512² (the 512- and 256-channel ones at 256² and 512²), so
the decoder does 31 % fewer; TAESD's decoder upsamples the same way. In the SD1.5 UNet the three
upsampling convolutions (1280, 1280 and 640 channels, at 16², 32² and 64² latents) are 68 of its 677
GFLOP, so the generator does 5.6 % fewer.

Export applies it to the VAE decoder and the generator it converts (`fold_upsampling`); the torch
reference the parity gate holds the artifact to keeps diffusers' own modules, so the gate checks the
rewrite as well.
"""

from __future__ import annotations

from nitro_edge._lazy import require

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional

# For the even and odd output phase: which of the 3x3 kernel's rows (or columns) fall on each of the
# two low-resolution taps. Even row 2i: tap i-1 gets kernel row 0, tap i rows 1 and 2; odd row 2i+1:
# tap i gets rows 0 and 1, tap i+1 row 2.
FOLD = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


class NearestUpConv(nn.Module):
    """conv(interpolate(x, scale_factor=2, mode="nearest")) for a 3x3, stride-1, padding-1 `conv`, as
    four 2x2 convolutions of x and a pixel shuffle (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()  # (out, in, 3, 3)
        fold = torch.tensor(FOLD, dtype=torch.float64)
        # phases[a, b]: the 2x2 kernel of output rows of parity a and columns of parity b
        phases = torch.einsum("ayk,bxl,oikl->aboiyx", fold, fold, weight.double()).to(weight.dtype)
        self.weight = nn.Parameter(phases.reshape(4, *phases.shape[2:]), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        outputs = []
        for phase in range(4):
            a, b = divmod(phase, 2)
            # even phases read one row (column) before, odd ones one after: pad that side only
            padded = F.pad(x, (1 - b, b, 1 - a, a))
            outputs.append(F.conv2d(padded, self.weight[phase], self.bias))
        n, c, h, w = outputs[0].shape
        # channel c * 4 + a * 2 + b holds phase (a, b): pixel_shuffle's order for output (2i + a, 2j + b)
        return F.pixel_shuffle(torch.stack(outputs, dim=2).reshape(n, c * 4, h, w), 2)


class _Upsample2D(nn.Module):
    """diffusers' Upsample2D (nearest 2x, then its 3x3 convolution) on NearestUpConv; another output
    size than 2x (the UNet asks for one when the latent is not a multiple of its downsampling; the VAE
    decoders never do) goes through the original module."""

    def __init__(self, original):
        super().__init__()
        self.original = original
        self.fused = NearestUpConv(original.conv if original.name == "conv" else original.Conv2d_0)

    def forward(self, hidden_states, output_size=None, *args, **kwargs):
        if output_size is not None and tuple(output_size) != tuple(2 * s for s in hidden_states.shape[-2:]):
            return self.original(hidden_states, output_size, *args, **kwargs)
        return self.fused(hidden_states)


def _foldable_conv(conv) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _nearest_2x(layer) -> bool:
    scale = layer.scale_factor
    scales = scale if isinstance(scale, tuple) else (scale, scale)
    return layer.mode == "nearest" and layer.size is None and all(float(s) == 2.0 for s in scales)


def fold_upsampling(module) -> int:
    """Replace, inside `module`, each 2x nearest upsampling that feeds a 3x3 convolution by the same
    function on NearestUpConv: diffusers' Upsample2D (the SD VAE decoder) and nn.Upsample followed by a
    Conv2d in an nn.Sequential (TAESD's decoder). Returns how many were replaced."""
    from diffusers.models.upsampling import Upsample2D

    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, Upsample2D)
                and child.use_conv
                and not child.use_conv_transpose
                and child.interpolate
                and child.norm is None
                and _foldable_conv(child.conv if child.name == "conv" else child.Conv2d_0)
            ):
                setattr(parent, name, _Upsample2D(child))
                count += 1
        if isinstance(parent, nn.Sequential):
            layers = list(parent)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], nn.Upsample) and _nearest_2x(layers[i]) and _foldable_conv(layers[i + 1]):
                    parent[i] = nn.Identity()
                    parent[i + 1] = NearestUpConv(layers[i + 1])
                    count += 1
    return count
