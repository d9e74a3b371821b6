"""What the full-scale benchmark measures, as typed rows: for each model, the exports (each bundle
or optimum folder made once) and the runs, in the order plan() lists them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OV_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass(frozen=True)
class Export:
    """One export: a nitro-edge bundle (precision, decoder, targets, target options) or an optimum folder."""

    kind: str  # "nitro" or "optimum"
    precision: str = "fp32"
    decoder: str = "full"  # "full" VAE or the "tiny" decoder (nitro)
    targets: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)  # nitro: export options per target
    runtime: str = ""  # optimum: "ort" or "openvino"

    def key(self) -> str:
        return json.dumps(
            [self.kind, self.precision, self.decoder, list(self.targets), self.options, self.runtime], sort_keys=True
        )

    def folder_name(self, size: int) -> str:
        if self.kind == "optimum":
            return f"optimum-{self.runtime}"
        extra = "-optimized" if self.options.get("onnx", {}).get("optimize") else ""
        return f"bundle-{'+'.join(self.targets)}-{self.precision}-{self.decoder}{extra}-{size}"


@dataclass(frozen=True)
class Run:
    """One timed run: diffusers' pipeline, optimum's pipeline on its export, or a nitro-edge bundle."""

    kind: str  # "diffusers", "optimum" or "nitro"
    backend: str = ""  # nitro: onnx / openvino; optimum: ort / openvino
    precision: str = ""  # nitro: the bundle precision to run
    options: dict = field(default_factory=dict)  # nitro: backend options; optimum: ov_config

    @property
    def device_default(self) -> bool:
        """An OpenVINO run at the plugin's default precision (bf16 on CPUs that have it)."""
        return (
            self.kind == "nitro" and self.backend == "openvino" and self.options.get("inference_precision", "") is None
        )


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    decoder: str  # "full VAE" or "tiny decoder", as the tables print it
    export: Export | None = None
    run: Run | None = None  # None: exported only (Core ML: prediction needs macOS)


def plan(model: str, optimum: bool) -> list[Row]:
    """Rows to measure: exports first (each bundle once), then runs."""
    rows = [Row("diffusers", "diffusers torch fp32", "full VAE", run=Run("diffusers"))]
    if optimum:
        ort, ov = Export("optimum", runtime="ort"), Export("optimum", runtime="openvino")
        rows += [
            Row("optimum-ort", "optimum onnxruntime fp32", "full VAE", ort, Run("optimum", "ort")),
            Row(
                "optimum-ov-f32",
                "optimum openvino fp32 (f32 hint)",
                "full VAE",
                ov,
                Run("optimum", "openvino", options=OV_F32),
            ),
            Row(
                "optimum-ov-default",
                "optimum openvino fp32 (plugin default: bf16 here)",
                "full VAE",
                ov,
                Run("optimum", "openvino"),
            ),
        ]
    for decoder in ("full", "tiny") if model in ("sd15", "sd21") else ("full",):
        label = "full VAE" if decoder == "full" else "tiny decoder"
        for target in ("onnx", "openvino"):
            # sdxl: one target per bundle, deleted after use (disk); the others hold both.
            bundle = Export("nitro", "fp32", decoder, (target,) if model == "sdxl" else ("onnx", "openvino"))
            rows.append(
                Row(
                    f"nitro-{target}-fp32-{decoder}",
                    f"nitro-edge {target} fp32" + (" (f32 hint)" if target == "openvino" else ""),
                    label,
                    bundle,
                    Run("nitro", target, "fp32"),
                )
            )
            if decoder == "full" and target == "openvino":
                rows.append(
                    Row(
                        "nitro-openvino-fp32-full-default",
                        "nitro-edge openvino fp32 (plugin default: bf16 here)",
                        label,
                        bundle,
                        Run("nitro", "openvino", "fp32", {"inference_precision": None}),
                    )
                )
    # int8 bundles run at OpenVINO's device-default precision (bf16 here), as the runtime does for int8.
    int8 = [("int8", "full")] + (
        [("int8-hybrid", "full"), ("int8-hybrid", "tiny")]
        if model == "sd15"
        else [("int8", "tiny")]
        if model == "sdxl"
        else []
    )
    for precision, decoder in int8:
        rows.append(
            Row(
                f"nitro-openvino-{precision}-{decoder}",
                f"nitro-edge openvino {precision}",
                "full VAE" if decoder == "full" else "tiny decoder",
                Export("nitro", precision, decoder, ("openvino",)),
                Run("nitro", "openvino", precision),
            )
        )
    if model == "sd15":  # the other precisions of the ONNX and OpenVINO targets (fp16 computes in f32 on CPUs)
        rows += [
            Row(
                f"nitro-{target}-{precision}-full",
                f"nitro-edge {target} {precision}",
                "full VAE",
                Export("nitro", precision, "full", targets),
                Run("nitro", target, precision),
            )
            for precision, targets in (("fp16", ("onnx", "openvino")), ("int8", ("onnx",)))
            for target in targets
        ]
    # Core ML: converted and checked here; prediction needs macOS, so these rows have no run.
    rows.append(
        Row(
            "nitro-coreml-fp16-full", "nitro-edge coreml fp16", "full VAE", Export("nitro", "fp16", "full", ("coreml",))
        )
    )
    if model == "sd15":
        rows.append(
            Row(
                "nitro-onnx-fp32-full-optimized",
                "nitro-edge onnx fp32 --onnx-optimize",
                "full VAE",
                Export("nitro", "fp32", "full", ("onnx",), {"onnx": {"optimize": True}}),
                Run("nitro", "onnx", "fp32"),
            )
        )
    return rows
