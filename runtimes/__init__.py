"""Backends. Each is one module with one load(bundle, precision, **options) that returns
{component name: callable from named numpy arrays to named numpy arrays}.
A new backend is one file plus one line in BACKENDS.
"""

BACKENDS = {
    "onnx": ("nitro_edge.runtimes.onnx", "onnx"),
    "openvino": ("nitro_edge.runtimes.openvino", "openvino"),
    "coreml": ("nitro_edge.runtimes.coreml", "coreml"),
    "torch": ("nitro_edge.runtimes.torch", "torch"),
}
# The target (bundle artifact format) each backend reads; torch rebuilds from the source.
TARGETS = {"onnx": "onnx", "openvino": "openvino", "coreml": "coreml", "torch": None}
# The module each backend needs installed (checked without importing it).
REQUIRES = {"onnx": "onnxruntime", "openvino": "openvino", "coreml": "coremltools", "torch": "torch"}
