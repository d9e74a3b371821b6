"""The CLI as a user runs it: real processes, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("torch")
CLI = [sys.executable, "-m", "nitro_edge.cli.main"]


def cli(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


def test_export_info_generate_round_trip(tiny_source, tmp_path):
    out = tmp_path / "bundle"
    r = cli("export", tiny_source("sdxl"), "-o", out, "--target", "onnx", "--shift", "250")
    assert r.returncode == 0, r.stderr
    assert "parity passed" in r.stderr and (out / "manifest.json").is_file()

    r = cli("info", out)
    assert r.returncode == 0 and "sdxl, 64x64, shift 250 (argument)" in r.stdout
    assert json.loads(cli("info", out, "--json").stdout)["architecture"] == "sdxl"

    r = cli("generate", "a red circle at the top left", "-m", out, "-o", tmp_path / "a.png", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "a.png").size == (64, 64)

    r = cli(
        "generate",
        "a red circle",
        "-m",
        tiny_source("sd15"),
        "-o",
        tmp_path / "b.png",
        "--batch",
        "2",
        "--shift",
        "500",
        "--backend",
        "torch",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b-0.png").is_file() and (tmp_path / "b-1.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "-m", "/nonexistent", "-o", "x.png"], "error: source not found: /nonexistent"),
        (
            ["generate", "x", "-m", "{sd15}", "-o", "x.png", "--steps", "5"],
            "error: steps must be an integer from 1 to 4, got 5",
        ),
        (["generate", "x", "-m", "{sd15}", "-o", "x.png", "--batch", "0"], "error: --batch must be at least 1, got 0"),
        (
            ["generate", "x", "-m", "{sd15}", "-o", "x.png", "--height", "100"],
            "error: height must be a positive multiple of 16",
        ),
        (
            ["generate", "x", "-m", "{sd15}", "-o", "x.png", "--backend", "onnx"],
            "error: a source folder runs on the torch backend only",
        ),
        (["export", "{sd15}", "-o", "{sd15}"], "exists and is not a bundle"),
        (["info", "/nonexistent"], "error: /nonexistent is not a bundle"),
    ],
)
def test_user_mistakes_print_one_line(tiny_source, tmp_path, args, message):
    src = str(tiny_source("sd15"))
    r = cli(*[a.replace("{sd15}", src) for a in args], cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_usage_error_is_not_a_traceback():
    r = cli("export")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Missing argument" in r.stderr


def test_generate_without_a_model_uses_the_shipped_default_bundle(tmp_path):
    """The embedded model ships exported: the first run writes nothing but the image."""
    env = {**os.environ, "COLUMNS": "200", "NITRO_EDGE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(
        [*CLI, "generate", "a red circle at the top left", "-o", str(tmp_path / "a.png"), "--backend", "onnx"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "embedded default nitro-shapes-64" in r.stderr and "default_bundle" in r.stderr
    assert "on onnx fp16" in r.stderr and Image.open(tmp_path / "a.png").size == (64, 64)
    assert not (tmp_path / "cache").exists()


def test_a_stale_shipped_bundle_is_not_used(tmp_path, monkeypatch):
    """A retrained default model whose bundle was not re-exported: the bundle is refused (warning)
    and the model is exported once into the cache instead."""
    import shutil

    from nitro_edge import default_model

    source = shutil.copytree(default_model.source_folder(), tmp_path / "default_model")
    shipped = shutil.copytree(default_model.shipped_bundle_folder(), tmp_path / "default_bundle")
    (source / "README.md").write_text("retrained\n")  # the fingerprint covers every file of the folder
    monkeypatch.setattr(default_model, "source_folder", lambda: source)
    monkeypatch.setattr(default_model, "shipped_bundle_folder", lambda: shipped)
    monkeypatch.setenv("NITRO_EDGE_CACHE", str(tmp_path / "cache"))
    path = default_model.default_bundle()
    assert path.parent == tmp_path / "cache" and (path / "manifest.json").is_file()
