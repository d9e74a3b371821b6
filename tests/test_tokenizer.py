"""The numpy-side tokenizer (tokenizers library) against transformers' CLIPTokenizer."""

import logging

import numpy as np
import pytest

from nitro_edge.bundle import Bundle
from nitro_edge.errors import InputError
from nitro_edge.tokenizer import check_prompts

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "a red circle at the top left",
    "A photograph of an astronaut riding a horse, 4k, highly detailed!",
    "two   spaces and CAPITALS; numbers 1234 and émojis ☕",
]


@pytest.mark.parametrize("arch", ["sd15", "sd21"])
def test_bundle_tokenizer_matches_transformers(arch, tiny_source, tmp_path):
    from nitro_edge.export import export_bundle

    source = tiny_source(arch)
    bundle = Bundle.open(export_bundle(source, tmp_path / "b"))
    ours = bundle.tokenizers()[0](PROMPTS)
    ref = transformers.CLIPTokenizer.from_pretrained(str(source / "tokenizer"))
    want = ref(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    assert ours.dtype == np.int64 and ours.shape == (3, 77)
    np.testing.assert_array_equal(ours, want)
    assert ours[0, 0] == 49406 and 49407 in ours[0]  # real CLIP start/end tokens


def test_long_prompt_is_truncated_with_a_warning(tiny_bundle, caplog):
    tok = Bundle.open(tiny_bundle("sd15")).tokenizers()[0]
    with caplog.at_level(logging.WARNING):
        ids = tok(["word " * 120])
    assert ids.shape == (1, 77) and ids[0, -1] == 49407
    assert "truncated" in caplog.text


@pytest.mark.parametrize("bad, match", [([], "empty batch"), (["  "], "empty"), ([3], "string")])
def test_bad_prompts_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        check_prompts(bad)
