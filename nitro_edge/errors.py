"""Typed errors. Every user mistake raises one of these; the CLI prints its message on one line."""

from __future__ import annotations


class NitroEdgeError(Exception):
    """Base class of every error nitro-edge raises on purpose."""


class SourceError(NitroEdgeError):
    """A model source (pipeline folder, UNet file) is missing or not of a supported layout."""


class BundleError(NitroEdgeError):
    """A bundle is missing, malformed, or its files do not match its manifest."""


class InputError(NitroEdgeError):
    """An argument (prompt, size, steps, seed, array) is outside what is accepted."""


class ParityError(NitroEdgeError):
    """An exported artifact disagrees with the torch reference beyond its precision's floor."""


class ComponentError(NitroEdgeError):
    """A component produced unusable output (NaN or Inf)."""


class MissingExtraError(NitroEdgeError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class Cancelled(NitroEdgeError):
    """A progress callback asked generation to stop."""
