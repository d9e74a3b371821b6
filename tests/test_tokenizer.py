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


# Awkward prompts: accents (composed and not), CJK, Korean, emoji (ZWJ sequences, flags, skin tones),
# fullwidth and halfwidth forms, ligatures and digraphs, curly quotes, C0/C1 control characters,
# terminal escapes, zero-width characters, a byte-order mark, odd whitespace, RTL scripts, Greek,
# Turkish, HTML entities (decoded unless the line holds "<"), special-token text, very long text.
AWKWARD = [
    "café naïve Zürich",
    "cafe\u0301 composed later",
    "一只猫坐在沙发上",
    "猫が座っている、東京タワー",
    "고양이가 소파에 앉아 있다",
    "a cat 🐱🚀 and a family 👨\u200d👩\u200d👧 🇫🇷 👍🏽",
    "Ａ fullwidth ＣＡＴ１２３！",
    "ｶﾀｶﾅ halfwidth ﾊﾟﾝ",
    "ﬁsh ﬂower ﬀ ﬃ ĳs Ǆ",
    "“quoted” ‘single’ ‚low‛ ʼn",
    "bell\x07 and\x1bescape \x7fdel",
    "\x1b[31mred\x1b[0m text",
    "c1 \x93quoted\x94 \x85 \x80 \x81",
    "zero\u200bwidth\u200cjoiner\u2060word",
    "\ufeffbom at start",
    "tabs\tand\nnew\r\nlines\u00a0nbsp\u3000ideographic",
    "  leading and trailing  ",
    "مرحبا بالعالم",
    "שלום עולם",
    "ΟΔΟΣ και Σίσυφος",
    "İstanbul ǅ straße STRASSE",
    "a cat &amp; dog &lt;3 &eacute;",
    "P&EACUTE;REZ &#233; &#x1F431; &notanentity;",
    "<b>&amp; stays</b>\nbut &amp; here",
    "<|endoftext|> in text",
    "∑∫√ ≠ ≤ ∞ ℋ 𝒥",
    "dots… and — dashes – ",
    "word " * 100,
]


def _reference(folder):
    """transformers' slow CLIPTokenizer with ftfy installed: OpenAI CLIP's own cleaning."""
    pytest.importorskip("ftfy")
    ref = transformers.CLIPTokenizer.from_pretrained(str(folder))
    assert ref.fix_text is not None  # ftfy is in use, not the BasicTokenizer fallback
    return lambda prompts: (
        ref(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    )


@pytest.mark.parametrize("arch", ["sd15", "sd21"])
def test_bundle_tokenizer_gives_clip_ids_for_awkward_prompts(arch, tiny_source, tiny_bundle):
    """The tokenizer.json a bundle ships (its normaliser) plus the runtime's HTML step give the ids
    CLIP's own tokenizer gives, prompt by prompt."""
    from nitro_edge.tokenizer import ClipTokenizer, tokenizer_from_folder

    source = tiny_source(arch)
    want = _reference(source / "tokenizer")(AWKWARD)
    ours = ClipTokenizer(*tokenizer_from_folder(source / "tokenizer", 77))(AWKWARD)
    for prompt, a, b in zip(AWKWARD, ours, want):
        assert a.tolist() == b.tolist(), f"{prompt!r}: {a[:12]} != {b[:12]}"
    if arch == "sd15":  # and as written into a bundle: the normaliser travels in tokenizer.json
        shipped = Bundle.open(tiny_bundle("sd15")).tokenizers()[0](AWKWARD)
        np.testing.assert_array_equal(shipped, want)


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
