"""memory="low": each component loaded when generation reaches it and released after; the same
images, and less peak memory (each mode in its own process)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

import nitro_edge  # noqa: E402
from nitro_edge.errors import InputError  # noqa: E402
from nitro_edge.export import export_bundle  # noqa: E402

PEAK = """
import json, sys, nitro_edge
from nitro_edge.bench import peak_rss_bytes
s = nitro_edge.load(sys.argv[1], backend="onnx", memory=sys.argv[2])
images = s.generate("a red circle", steps=2, seed=3, output="numpy")
print(json.dumps({"peak_mib": peak_rss_bytes() / 2**20, "mean": float(images.mean())}))
"""


@pytest.fixture(scope="module")
def heavy_bundle(tiny_source, tmp_path_factory):
    """The tiny SD1.5 with a wider UNet and VAE, so the components weigh tens of MB each."""
    import shutil

    root = tmp_path_factory.mktemp("heavy")
    src = shutil.copytree(tiny_source("sd15"), root / "src")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        diffusers.UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(96, 192),
            layers_per_block=2,
            norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
        ).save_pretrained(src / "unet")
        diffusers.AutoencoderKL(
            block_out_channels=(96, 192, 192, 192),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32,
            layers_per_block=2,
        ).save_pretrained(src / "vae")
    return export_bundle(src, root / "bundle", targets=["onnx"], shift=500)


def test_low_memory_gives_the_same_images_with_one_component_at_a_time(heavy_bundle):
    normal = nitro_edge.load(heavy_bundle, backend="onnx")
    low = nitro_edge.load(heavy_bundle, backend="onnx", memory="low")
    assert (normal.memory, low.memory) == ("normal", "low")
    held, most = set(), 0
    load = low.components.load

    def counting(names):
        loaded = load(names)
        held.update(names)
        return loaded

    low.components.load = counting
    for steps in (1, 3):
        np.testing.assert_array_equal(
            normal.generate(["a cat", "a dog"], steps=steps, seed=1, output="numpy"),
            low.generate(["a cat", "a dog"], steps=steps, seed=1, output="numpy"),
        )
    assert held == {"text_encoder", "generator", "vae_decoder"}
    with pytest.raises(InputError, match="memory must be one of"):
        nitro_edge.load(heavy_bundle, memory="tiny")
    del most


def test_low_memory_peaks_lower_in_its_own_process(heavy_bundle):
    sizes = {p.stem: p.stat().st_size / 2**20 for p in (heavy_bundle / "onnx" / "fp32").glob("*.onnx")}
    runs = {}
    for memory in ("normal", "low"):
        r = subprocess.run([sys.executable, "-c", PEAK, str(heavy_bundle), memory], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[memory] = json.loads(r.stdout.strip().splitlines()[-1])
    assert runs["normal"]["mean"] == runs["low"]["mean"]
    # Low holds about the largest component, not all: at least half of the others' bytes are saved.
    saved = runs["normal"]["peak_mib"] - runs["low"]["peak_mib"]
    assert saved >= 0.5 * (sum(sizes.values()) - max(sizes.values())), (runs, sizes)


@pytest.mark.parametrize("memory", ["normal", "low"])
def test_rss_phases_takes_the_shipped_bundle_apart_in_both_modes(memory):
    pytest.importorskip("openvino")
    from nitro_edge import default_model

    script = Path(__file__).parents[1] / "benchmarks" / "rss_phases.py"
    bundle = default_model.shipped_bundle_folder()
    argv = [str(bundle), "--backend", "openvino", "--precision", "fp16", "--memory", memory]
    out = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, check=True).stdout
    lines = [line.split(" peak ")[0].strip() for line in out.splitlines()]
    if memory == "low":  # each component: released before, load and compile, call; twice
        for name in ("text_encoder", "generator", "vae_decoder"):
            assert lines.count(f"{name} load and compile") == lines.count(f"{name} call") == 2, out
        assert lines.count("(previous component released)") == 6, out
    else:
        assert lines[1] == "load and compile" and lines.count("generator") == 2, out
    assert lines[-1] == "after image 2" and all(" GiB, now " in line for line in out.splitlines()), out
