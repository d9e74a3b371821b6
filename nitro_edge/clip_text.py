"""Prompt text as OpenAI's CLIP tokenizer cleans it, without ftfy at run time.

CLIP (and transformers' CLIPTokenizer when ftfy is installed) runs ftfy.fix_text, collapses
whitespace and lower-cases before byte-pair encoding. The `tokenizers` library's CLIP tokenizer only
applies NFC, the whitespace collapse and lower-casing, so it gives other ids for fullwidth letters,
ligatures, curly quotes, C1 and other control characters, terminal escapes and HTML entities.

`normalizer()` is a `tokenizers` normalizer that reproduces ftfy's deterministic fixes (the character
tables below follow ftfy 6's documented behaviour), then CLIP's whitespace collapse and lower-casing;
export writes it into every bundle's tokenizer.json, so any runtime that reads that file (Python,
Swift, Kotlin) gets it. `unescape_html()` is ftfy's entity decoding, which depends on context (not in
a line that holds "<"), so it runs in Python before the normalizer, in `clean()`, which
nitro_edge.tokenizer applies to every prompt.
Not reproduced: ftfy's repair of mojibake (text decoded with the wrong codec, "CafÃ©"), which is
heuristic; such text gets the same ids as transformers' fast CLIP tokenizer gives it.
"""

from __future__ import annotations

import functools
import html.entities
import re
import unicodedata

# ANSI terminal escape sequences (colours etc.): removed.
TERMINAL_ESCAPE = r"\x1b\[[0-9;]*[a-zA-Z]"
# Latin ligatures and legacy digraphs, split into their letters.
LIGATURES = {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
}  # fmt: skip
SINGLE_QUOTES = "\u02bc\u2018\u2019\u201a\u201b"  # -> '
DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f"  # -> "
# Control characters removed: C0 controls but tab, newline, form feed and carriage return; DEL;
# the deprecated format characters U+206A-U+206F; the byte-order mark; interlinear annotation.
CONTROL = "[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]"


def width_map() -> dict[str, str]:
    """Halfwidth and fullwidth forms (U+FF01-U+FFEF) to their usual width, and the ideographic space to a space."""
    out = {"\u3000": " "}
    for code in range(0xFF01, 0xFFF0):
        char = chr(code)
        normal = unicodedata.normalize("NFKC", char)
        if normal != char:
            out[char] = normal
    return out


def c1_map() -> dict[str, str]:
    """C1 control characters read as Windows-1252, as browsers do (those it leaves undefined stay)."""
    out = {}
    for code in range(0x80, 0xA0):
        try:
            out[chr(code)] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            pass
    return out


def normalizer(lowercase: bool = True):
    """The `tokenizers` normalizer: ftfy's character fixes, NFC, CLIP's whitespace collapse, lower case.

    Its lower-casing is per character, so an upper-case final sigma becomes σ where Python's
    str.lower() (and so CLIP) gives ς; `clean()` writes those as ς beforehand."""
    from tokenizers import Regex
    from tokenizers import normalizers as n

    rules = [n.Replace(Regex(TERMINAL_ESCAPE), "")]
    for table in (c1_map(), LIGATURES, width_map()):
        rules += [n.Replace(old, new) for old, new in table.items()]
    rules += [n.Replace(Regex(f"[{SINGLE_QUOTES}]"), "'"), n.Replace(Regex(f"[{DOUBLE_QUOTES}]"), '"')]
    rules += [n.Replace(Regex(CONTROL), ""), n.NFC(), n.Replace(Regex(r"\s+"), " ")]
    return n.Sequence(rules + ([n.Lowercase()] if lowercase else []))


def clean(text: str) -> str:
    """What nitro_edge's tokenizer does in Python before the tokenizer.json pipeline: decode HTML
    entities (ftfy's rule), and write a final capital sigma as ς, which Python's str.lower() (so
    CLIP) does from context and the normaliser's per-character lower-casing cannot. Neither step
    touches the raw text the tokenizer matches its special tokens in, except an entity that decodes
    to one (SD2.1's pad token is "!", so "&excl;" becomes the pad id where CLIP reads "!</w>")."""
    return _FINAL_SIGMA.sub(_sigma, unescape_html(text)) if "Σ" in text else unescape_html(text)


# Unicode's final-sigma condition, as str.lower() applies it: a cased letter before (case-ignorable
# characters may lie between) and none after. Letters with case stand for "cased" here.
_FINAL_SIGMA = re.compile("Σ")


def _sigma(match: re.Match) -> str:
    text, i = match.string, match.start()
    return "ς" if _cased_beside(text, i, -1) and not _cased_beside(text, i, 1) else "Σ"


def _cased_beside(text: str, i: int, step: int) -> bool:
    j = i + step
    while 0 <= j < len(text):
        c = text[j]
        if unicodedata.category(c) in ("Lu", "Ll", "Lt"):
            return True
        if not (
            unicodedata.category(c) in ("Mn", "Me", "Cf", "Lm", "Sk") or c in "'.:^`\u00b7\u2018\u2019\u2024\u2027"
        ):
            return False
        j += step
    return False


@functools.cache
def _entities() -> dict[str, str]:
    """HTML5 entities that end in a semicolon, and all-caps forms of the lower-case ones that do not
    collide with another entity (ftfy decodes "&EACUTE;" as "É")."""
    out = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            out["&" + name] = char
            upper = "&" + name.upper()
            if name == name.lower() and html.unescape(upper) == upper:
                out[upper] = char.upper()
    return out


_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_LINE = re.compile(r"(?<=\n)")


def unescape_html(text: str) -> str:
    """Decode HTML entities and character references, line by line, until a line holds "<"
    (text that looks like HTML keeps its entities from there on, as in ftfy)."""
    if "&" not in text:
        return text
    out, markup = [], False
    for line in _LINE.split(text):
        markup = markup or "<" in line
        out.append(line if markup else _ENTITY.sub(_decode, line))
    return "".join(out)


def _decode(match: re.Match) -> str:
    entity = match.group(0)
    if entity in _entities():
        return _entities()[entity]
    if entity.startswith("&#"):
        decoded = html.unescape(entity)
        return entity if ";" in decoded else decoded
    return entity
