"""The peers' measurements, each run in a fresh process by `in_child(name, *args, script=__file__)`:
openvino.genai's Text2ImagePipeline, stable-diffusion.cpp (through stable-diffusion-cpp-python),
FastSD CPU's configuration (optimum-intel's OpenVINO pipeline with the tiny decoder), which kernels
OpenVINO ran for a bundle, and the machine's GEMM peak per precision in OpenVINO."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from scale.children import PROMPT, child_main, timed_calls  # noqa: E402


def child_genai_run(folder: str, runs: int, size: int, config: dict, image: str | None = None) -> dict:
    """openvino.genai's C++ pipeline on an optimum-intel export: reshaped to one image at `size`² without
    guidance (a UNet batch of 1, as it runs one-step models), compiled for the CPU with `config`."""
    import numpy as np
    import openvino_genai
    from PIL import Image

    t0 = time.perf_counter()
    pipe = openvino_genai.Text2ImagePipeline(folder)
    pipe.reshape(1, size, size, 0.0)
    pipe.compile("CPU", config=config)

    def call(i):
        tensor = pipe.generate(
            PROMPT,
            num_inference_steps=1,
            guidance_scale=0.0,
            width=size,
            height=size,
            generator=openvino_genai.TorchGenerator(i),
        )
        return Image.fromarray(np.asarray(tensor.data)[0])

    return timed_calls(call, runs, t0, image)


def child_ov_tokenizer(folder: str) -> dict:
    """openvino.genai reads the tokenizer as an OpenVINO model (tokenizer/openvino_tokenizer.xml).
    optimum-intel writes it at export when openvino-tokenizers is installed; where it did not (1.27
    here), it is converted from the same tokenizer files with openvino_tokenizers."""
    import openvino as ov
    import openvino_tokenizers
    from transformers import CLIPTokenizerFast

    t0 = time.perf_counter()
    model = openvino_tokenizers.convert_tokenizer(CLIPTokenizerFast.from_pretrained(folder))
    ov.save_model(model, str(Path(folder) / "openvino_tokenizer.xml"))
    return {"export_s": time.perf_counter() - t0}


def child_sdcpp_run(
    model_file: str, wtype: str, taesd_file: str | None, runs: int, size: int, image: str | None = None
) -> dict:
    """stable-diffusion.cpp on the pipeline written as one original-layout file; `wtype` is the weight
    type it converts to on load (f32, f16, q8_0), `taesd_file` its tiny decoder. One step, no guidance
    (cfg 1), its default sampler and schedule, all cores of this machine."""
    from stable_diffusion_cpp import StableDiffusion

    t0 = time.perf_counter()
    sd = StableDiffusion(
        model_path=model_file,
        taesd_path=taesd_file or "",
        wtype=wtype,
        n_threads=os.cpu_count(),
        verbose=False,
    )

    def call(i):
        return sd.generate_image(PROMPT, cfg_scale=1.0, sample_steps=1, width=size, height=size, seed=i)[0]

    return timed_calls(call, runs, t0, image)


def child_fastsd_folder(optimum_folder: str, taesd: str, out: str, size: int) -> dict:
    """FastSD CPU's configuration: optimum-intel's OpenVINO export with its VAE decoder replaced by an
    OpenVINO IR of the tiny decoder (input latent_sample, output sample, as optimum calls it). The
    other files are hard links to the full export's. optimum divides the latents by the decoder's
    scaling_factor; the tiny decoder takes them unscaled, so its config says 1.0."""
    import json

    import diffusers
    import openvino as ov
    import torch

    t0 = time.perf_counter()
    dst = Path(out + ".partial")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(optimum_folder, dst, copy_function=os.link)
    tiny = diffusers.AutoencoderTiny.from_pretrained(taesd).eval()

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tiny = tiny  # a submodule, so its weights are traced as parameters

        def forward(self, latent_sample):
            return self.tiny.decode(latent_sample).sample

    latent = torch.randn(1, 4, size // 8, size // 8)
    with torch.no_grad():
        model = ov.convert_model(Decoder().eval(), example_input=latent)
    model.inputs[0].get_tensor().set_names({"latent_sample"})
    model.outputs[0].get_tensor().set_names({"sample"})
    model.reshape({0: [-1, 4, -1, -1]})  # dynamic, as optimum's own export
    decoder = dst / "vae_decoder"
    shutil.rmtree(decoder)
    decoder.mkdir()
    ov.save_model(model, decoder / "openvino_model.xml", compress_to_fp16=False)
    config = {**dict(tiny.config), "scaling_factor": 1.0, "_class_name": "AutoencoderTiny"}
    (decoder / "config.json").write_text(json.dumps(config, default=list, indent=2))
    os.replace(dst, out)
    return {"export_s": time.perf_counter() - t0}


def _kernel(op) -> tuple[str, str]:
    """An execution-graph node's layer type, and "type precision primitive" (gemm_mlas_f32, brgemm_avx512_amx...)."""
    info = op.get_rt_info()
    layer, precision, primitive = (info[k].astype(str) for k in ("layerType", "runtimePrecision", "primitiveType"))
    return layer, f"{layer} {precision} {primitive}"


def child_kernels(bundle: str, precision: str, inference_precision: str | None) -> dict:
    """Which CPU kernels OpenVINO chose for the bundle's generator and decoder (from each compiled
    model's execution graph): per component, layer type and runtime precision, the primitive types
    and how many layers ran each (jit_avx512_amx_*, brgconv_avx512_core_vnni, ...)."""
    import openvino as ov

    from nitro_edge.bundle import Bundle

    core = ov.Core()
    b = Bundle.open(bundle, verify=False)
    config = {"INFERENCE_PRECISION_HINT": inference_precision} if inference_precision else {}
    out = {}
    for name in ("generator", "vae_decoder"):
        files = b.manifest["components"][name]["artifacts"]["openvino"][precision]["files"]
        xml = next(f for f in files if f.endswith(".xml"))
        runtime = core.compile_model(str(Path(bundle) / xml), "CPU", config).get_runtime_model()
        tally: dict[str, int] = {}
        for op in runtime.get_ops():
            layer, key = _kernel(op)
            if layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"):
                tally[key] = tally.get(key, 0) + 1
        out[name] = dict(sorted(tally.items(), key=lambda kv: -kv[1]))
    return {"kernels": out}


def child_gemm_peak(n: int = 4096, repeats: int = 5) -> dict:
    """This machine's matmul peak in OpenVINO (the runtime of nitro-edge's fastest rows): an n×n×n
    MatMul with a constant weight, at f32 compute, at bf16 compute (the device default where the CPU
    has it; elsewhere the plugin computes f32), and int8 (below); median of `repeats` calls after a warm-up, FLOPs = 2n³. The kernel each ran is reported."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    w = rng.standard_normal((n, n), dtype=np.float32)

    # int8 as NNCF writes it: activations through a FakeQuantize of u8 range, weights stored int8 with a
    # per-channel scale (Convert, Multiply): the pattern OpenVINO's low-precision passes turn into an
    # int8 kernel (a FakeQuantize on a constant weight is folded back to f32 instead).
    w8 = rng.integers(-127, 128, (n, n)).astype(np.int8)
    result = {}
    for label, int8, hint in (("f32", False, "f32"), ("bf16", False, "bf16"), ("int8", True, None)):
        param = ops.parameter([n, n], ov.Type.f32, name="x")
        if int8:
            lo, hi = ops.constant(np.float32(0.0)), ops.constant(np.float32(4.0))
            a = ops.fake_quantize(param, lo, hi, lo, hi, 256)
            scale = ops.constant(np.full((1, n), 0.01, np.float32))
            b = ops.multiply(ops.convert(ops.constant(w8), ov.Type.f32), scale)
        else:
            a, b = param, ops.constant(w)
        model = ov.Model([ops.matmul(a, b, False, False)], [param])
        config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        request.infer({0: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            request.infer({0: x})
            times.append(time.perf_counter() - start)
        kernels = sorted(
            {
                key
                for layer, key in map(_kernel, compiled.get_runtime_model().get_ops())
                if layer in ("FullyConnected", "MatMul")
            }
        )
        median = sorted(times)[len(times) // 2]
        result[label] = {"flops_per_s": 2 * n**3 / median, "median_s": median, "kernels": kernels}
    return result


CHILDREN = {
    f.__name__: f
    for f in (child_genai_run, child_ov_tokenizer, child_sdcpp_run, child_fastsd_folder, child_kernels, child_gemm_peak)
}

if __name__ == "__main__":
    child_main(CHILDREN, sys.argv[1], sys.argv[2])
