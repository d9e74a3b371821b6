"""The bundle: one folder with a versioned JSON manifest and the files it lists with their sha256.

Export writes it; runtimes read it. A bundle whose files do not match its manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nitro_edge.errors import BundleError, InputError
from nitro_edge.schedule import SamplerParams
from nitro_edge.specs import ARCHITECTURES, COMPONENTS, ComponentSpec, ModelDims
from nitro_edge.tokenizer import ClipTokenizer, TokenizerInfo

MANIFEST = "manifest.json"
SCHEMA = "nitro-edge/bundle"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
REQUIRED = ("schema", "schema_version", "architecture", "dims", "sampler", "tokenizers", "components", "files")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_relpath(root: Path, rel: str) -> Path:
    """`root / rel`, refusing absolute paths, `..`, and symlinks that lead out of the bundle."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"manifest path must be a non-empty string, got {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or ":" in rel:
        raise BundleError(f"manifest path {rel!r} leaves the bundle; expected a relative path inside it")
    path = root / pure
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise BundleError(f"manifest path {rel!r} resolves outside the bundle (symlink?)")
    return path


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclass
class Bundle:
    """A validated bundle on disk."""

    root: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        """Read and validate the manifest; with `verify`, check every file's size and sha256."""
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{root} is not a bundle: expected {MANIFEST} inside it")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{manifest_path} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
        bundle = cls(root, manifest)
        bundle.validate()
        if verify:
            bundle.verify_files()
        return bundle

    def validate(self) -> None:
        m = self.manifest
        if not isinstance(m, dict):
            raise BundleError(f"manifest must be a JSON object, got {type(m).__name__}")
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise BundleError(f"manifest lacks the fields {missing}")
        if m["schema"] != SCHEMA:
            raise BundleError(f"manifest schema is {m['schema']!r}, expected {SCHEMA!r}")
        if m["schema_version"] != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version is {m['schema_version']!r}; this nitro-edge reads {SCHEMA_VERSION}"
            )
        if m["architecture"] not in ARCHITECTURES:
            raise BundleError(f"architecture must be one of {ARCHITECTURES}, got {m['architecture']!r}")
        try:
            self.dims, self.params, self.specs = (
                ModelDims.from_dict(m["dims"]),
                SamplerParams.from_dict(m["sampler"]),
                {n: ComponentSpec.from_dict(n, c) for n, c in m["components"].items()},
            )
            _check_dims(self.dims)
        except (KeyError, TypeError, ValueError, AttributeError, InputError) as exc:
            raise BundleError(f"manifest fields are malformed: {exc!r}") from exc
        want = set(COMPONENTS[m["architecture"]])
        if set(self.specs) != want:
            raise BundleError(f"manifest components are {sorted(self.specs)}, expected {sorted(want)}")
        if not isinstance(m["files"], dict):
            raise BundleError("manifest 'files' must map paths to {sha256, bytes}")
        for rel, entry in m["files"].items():
            safe_relpath(self.root, rel)
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int)
                and entry["bytes"] >= 0
            ):
                raise BundleError(f"manifest entry for {rel!r} must be {{sha256: str, bytes: int >= 0}}")
        tokenizers = m["tokenizers"]
        if not isinstance(tokenizers, list) or len(tokenizers) != len(self.dims.text_hidden):
            raise BundleError(
                f"manifest 'tokenizers' must list one entry per text encoder ({len(self.dims.text_hidden)})"
            )
        for entry in tokenizers:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("file"), str)
                and isinstance(entry.get("max_length"), int)
                and isinstance(entry.get("pad_token_id"), int)
            ):
                raise BundleError("each manifest tokenizer needs file (str), max_length (int), pad_token_id (int)")
            if entry["max_length"] != self.dims.max_length:
                raise BundleError(
                    f"manifest tokenizer max_length {entry['max_length']} differs from the text encoders' "
                    f"input length {self.dims.max_length} (dims.max_length)"
                )
            if not 0 <= entry["pad_token_id"] < 2**31:
                raise BundleError(
                    f"manifest tokenizer pad_token_id must be a token id (0 to 2**31 - 1), got {entry['pad_token_id']}"
                )
            safe_relpath(self.root, entry["file"])
        for name, comp in m["components"].items():
            artifacts = comp.get("artifacts", {})
            if not isinstance(artifacts, dict) or not all(isinstance(v, dict) for v in artifacts.values()):
                raise BundleError(f"component {name}: 'artifacts' must map target -> precision -> artifact")
            for target, by_precision in artifacts.items():
                for precision, art in by_precision.items():
                    if not (
                        isinstance(art, dict)
                        and isinstance(art.get("path"), str)
                        and isinstance(art.get("files"), list)
                    ):
                        raise BundleError(f"artifact {name}/{target}/{precision} needs path (str) and files (list)")
                    chunks = art.get("chunks", [])
                    if not (isinstance(chunks, list) and all(isinstance(c, str) for c in chunks)):
                        raise BundleError(f"artifact {name}/{target}/{precision} 'chunks' must be a list of paths")
                    for rel in [art["path"], *art["files"], *chunks]:
                        safe_relpath(self.root, rel)

    def verify_files(self) -> None:
        for rel, entry in self.manifest["files"].items():
            path = safe_relpath(self.root, rel)
            if not path.is_file():
                raise BundleError(f"bundle file {rel} is missing")
            if path.stat().st_size != entry.get("bytes"):
                raise BundleError(
                    f"bundle file {rel} has {path.stat().st_size} bytes, manifest says {entry.get('bytes')}"
                )
            if sha256_file(path) != entry.get("sha256"):
                raise BundleError(f"bundle file {rel} does not match its sha256 in the manifest")

    def path(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise BundleError(f"{rel} is not listed in the manifest's files")
        return safe_relpath(self.root, rel)

    @property
    def architecture(self) -> str:
        return self.manifest["architecture"]

    def targets(self) -> dict[str, list[str]]:
        """{target: [precisions]} available for every component."""
        found: dict[str, set] = {}
        for i, comp in enumerate(self.manifest["components"].values()):
            here = {(t, p) for t, by_p in comp.get("artifacts", {}).items() for p in by_p}
            found = here if i == 0 else found & here
        out: dict[str, list[str]] = {}
        for t, p in sorted(found):
            out.setdefault(t, []).append(p)
        return out

    def artifact(self, component: str, target: str, precision: str) -> dict:
        try:
            return self.manifest["components"][component]["artifacts"][target][precision]
        except KeyError:
            raise BundleError(
                f"bundle has no {target} {precision} artifact for {component}; it has {self.targets()}"
            ) from None

    def artifact_path(self, component: str, target: str, precision: str) -> Path:
        """The path a runtime opens (a file, or a package folder), after checking its files are listed."""
        art = self.artifact(component, target, precision)
        for rel in art.get("files", []):
            self.path(rel)
        path = safe_relpath(self.root, art["path"])
        if not path.exists():
            raise BundleError(f"{art['path']} is missing from the bundle")
        return path

    def artifact_parts(self, component: str, target: str, precision: str) -> list[Path]:
        """The paths a runtime opens in order: the artifact, or each of its chunks."""
        art = self.artifact(component, target, precision)
        first = self.artifact_path(component, target, precision)
        parts = [first] + [safe_relpath(self.root, rel) for rel in art.get("chunks", [])[1:]]
        for rel, path in zip(art.get("chunks", []), parts):
            if not path.exists() or not any(f == rel or f.startswith(rel + "/") for f in art["files"]):
                raise BundleError(f"chunk {rel} of {component} is missing or not among the artifact's files")
        return parts

    def tokenizers(self) -> list[ClipTokenizer]:
        out = []
        for entry in self.manifest["tokenizers"]:
            info = TokenizerInfo(max_length=int(entry["max_length"]), pad_token_id=int(entry["pad_token_id"]))
            out.append(ClipTokenizer.from_file(self.path(entry["file"]), info))
        return out


LIMITS = {
    "height": (8, 8192),
    "width": (8, 8192),
    "max_length": (1, 1024),
    "latent_channels": (1, 64),
    "vae_scale_factor": (1, 64),
}


def _check_dims(dims: ModelDims) -> None:
    """Sizes within sane bounds, so a hostile manifest cannot ask for absurd allocations."""
    for key, (low, high) in LIMITS.items():
        value = getattr(dims, key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(f"dims.{key} must be an integer in [{low}, {high}], got {value!r}")
    if dims.height % dims.vae_scale_factor or dims.width % dims.vae_scale_factor:
        raise InputError("dims.height and dims.width must be multiples of vae_scale_factor")
    if not dims.text_hidden or not all(isinstance(h, int) and 1 <= h <= 16384 for h in dims.text_hidden):
        raise InputError(f"dims.text_hidden must list positive sizes, got {dims.text_hidden!r}")


def file_entries(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} for every file under `root` except the manifest."""
    entries = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(root).as_posix()
        entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries
