"""Export: a source model to a bundle of ONNX, OpenVINO and Core ML artifacts, each proven
against the torch module it came from. One file per target, each with one export()."""

from nitro_edge.export.build import TARGETS, export_bundle, target_precisions

__all__ = ["TARGETS", "export_bundle", "target_precisions"]
