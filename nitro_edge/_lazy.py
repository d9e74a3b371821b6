"""Import optional dependencies where they are used, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from nitro_edge.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError telling which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is needed here but is not installed: run `pip install 'nitro-edge[{extra}]'` ({exc})"
        ) from exc
