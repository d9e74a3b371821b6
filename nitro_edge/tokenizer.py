"""CLIP byte-pair tokenisation with the `tokenizers` library, from a tokenizer.json file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nitro_edge import clip_text
from nitro_edge.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerInfo:
    """How a tokenizer pads and truncates: what the manifest records beside tokenizer.json."""

    max_length: int
    pad_token_id: int


class ClipTokenizer:
    """Pads and truncates prompts to `max_length` ids exactly as diffusers' pipelines do."""

    def __init__(self, backend, info: TokenizerInfo):
        self._backend = backend
        self.info = info
        backend.enable_truncation(max_length=info.max_length)
        backend.enable_padding(length=info.max_length, pad_id=info.pad_token_id)

    @classmethod
    def from_file(cls, path: str | Path, info: TokenizerInfo) -> ClipTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), info)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as tokenizer.json (what bundles carry)."""
        self._backend.save(str(path))

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids, int64, shape (len(prompts), max_length): CLIP's own ids (nitro_edge.clip_text)."""
        encodings = self._backend.encode_batch([clip_text.clean(p) for p in prompts])
        for prompt, enc in zip(prompts, encodings):
            if enc.overflowing:
                log.warning("prompt is longer than %d tokens and was truncated: %.60r...", self.info.max_length, prompt)
        return np.asarray([enc.ids for enc in encodings], dtype=np.int64)


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """Normalise one prompt or a list of them; refuse an empty batch or a non-text prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("expected at least one prompt, got an empty batch")
    for p in prompts:
        if not isinstance(p, str):
            raise InputError(f"each prompt must be a string, got {type(p).__name__}")
        if not p.strip():
            raise InputError("a prompt is empty: expected some text to describe the image")
    return prompts


def tokenizer_from_folder(folder: Path, max_positions: int) -> tuple[object, TokenizerInfo]:
    """A `tokenizers.Tokenizer` and its padding facts from a diffusers tokenizer folder.

    Uses the folder's tokenizer.json when present; otherwise transformers converts the slow
    CLIP files (vocab.json, merges.txt) to the fast form once. `max_positions` is the text
    encoder's max_position_embeddings: the length used when the tokenizer does not set its own
    (transformers then reports a huge sentinel), and the longest the encoder can take.
    """
    from nitro_edge._lazy import require
    from nitro_edge.errors import SourceError

    transformers = require("transformers", "torch")
    tok = transformers.CLIPTokenizerFast.from_pretrained(str(folder))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise SourceError(f"the tokenizer in {folder} has neither a pad nor an end-of-text token")
    max_length = int(tok.model_max_length)
    if max_length >= UNSET_MAX_LENGTH:
        log.info(
            "the tokenizer in %s sets no model_max_length; using the text encoder's %d positions", folder, max_positions
        )
        max_length = max_positions
    if not 1 <= max_length <= max_positions:
        raise SourceError(
            f"the tokenizer in {folder} pads to {max_length} tokens, but its text encoder takes 1 to {max_positions}"
        )
    backend = tok.backend_tokenizer
    backend.normalizer = clip_text.normalizer()  # CLIP's text cleaning (ftfy's fixes), written into bundles
    return backend, TokenizerInfo(max_length=max_length, pad_token_id=int(pad))


# transformers' model_max_length when a tokenizer config sets none (int(1e30)); anything this large is unset.
UNSET_MAX_LENGTH = 10**12
