"""The upsampling fold export applies: the same function as nearest 2x upsampling then a 3x3 convolution,
on its own and inside the UNet, the VAE decoder and TAESD's decoder."""

import copy

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from nitro_edge.models.upsampling import NearestUpConv, fold_upsampling  # noqa: E402
from nitro_edge.tiny import build_tiny_autoencoder_tiny  # noqa: E402


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8)])
def test_the_fold_is_the_upsampled_convolution(bias, size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=bias)
    x = torch.randn(2, 6, *size)
    expected = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    folded = NearestUpConv(conv)(x)
    assert folded.shape == expected.shape == (2, 5, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)


def _folded_copy(module, expected_count):
    folded = copy.deepcopy(module)
    assert fold_upsampling(folded) == expected_count
    return folded


@torch.no_grad()
def test_the_fold_keeps_the_unet_and_the_vae_decoder(tiny_source):
    torch.manual_seed(0)
    folder = tiny_source("sd15")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    upsamplers = sum(1 for block in unet.up_blocks if block.upsamplers)
    assert upsamplers >= 1
    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    context = torch.randn(1, 7, unet.config.cross_attention_dim)
    expected = unet(sample, 500, context).sample
    torch.testing.assert_close(
        _folded_copy(unet, upsamplers)(sample, 500, context).sample, expected, atol=1e-5, rtol=1e-4
    )

    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    latents = torch.randn(1, 4, 8, 8)
    expected = vae.decode(latents).sample
    count = len(vae.config.block_out_channels) - 1
    torch.testing.assert_close(_folded_copy(vae, count).decode(latents).sample, expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_the_fold_keeps_taesd(tmp_path):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderTiny.from_pretrained(build_tiny_autoencoder_tiny(tmp_path / "taesd")).eval()
    latents = torch.randn(1, 4, 8, 8)
    expected = vae.decode(latents).sample
    folded = _folded_copy(vae.decoder, 3)
    assert not any(isinstance(m, torch.nn.Upsample) for m in folded.modules())
    torch.testing.assert_close(folded(latents), vae.decoder(latents), atol=1e-5, rtol=1e-4)
    assert expected.shape == (1, 3, 64, 64)


def test_an_upsampling_that_cannot_fold_is_left_alone():
    strided = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2.0), torch.nn.Conv2d(3, 3, 3, stride=2, padding=1))
    bilinear = torch.nn.Sequential(
        torch.nn.Upsample(scale_factor=2.0, mode="bilinear"), torch.nn.Conv2d(3, 3, 3, padding=1)
    )
    five = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2.0), torch.nn.Conv2d(3, 3, 5, padding=2))
    for module in (strided, bilinear, five):
        assert fold_upsampling(module) == 0
        assert isinstance(module[0], torch.nn.Upsample)
