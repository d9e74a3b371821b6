"""NitroFusion dynamic adversarial distillation (see docs/training.md)."""
