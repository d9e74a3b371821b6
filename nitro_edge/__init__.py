"""nitro-edge: one-step text-to-image diffusion on device (NitroFusion).

`import nitro_edge` needs only numpy and tokenizers; torch and each backend load lazily.
"""

from nitro_edge.errors import NitroEdgeError

__version__ = "0.1.0"
__all__ = ["load", "NitroEdgeError", "__version__"]


def load(path, backend="auto", **kwargs):
    """A Sampler for a bundle or a source folder; see nitro_edge.api.load."""
    from nitro_edge.api import load as _load

    return _load(path, backend, **kwargs)
