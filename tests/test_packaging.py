"""Layout and import hygiene: namespace, lazy torch, console script."""

from __future__ import annotations

import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")


def test_layers_install_under_the_namespace():
    result = run_python("import nitro_edge.export, nitro_edge.runtimes, nitro_edge.training; print('ok')")
    assert result.stdout.strip() == "ok", result.stderr
    for generic in ("export", "runtimes", "training"):
        result = run_python(f"import {generic}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def assert_runs_without_torch(body: str) -> None:
    """Run `body` in a fresh interpreter, then require that torch (and friends) were never imported."""
    code = body + (
        "import sys\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules\n"
        "print('clean')"
    )
    result = run_python(code)
    assert result.stdout.strip() == "clean", result.stderr


def test_core_and_onnx_runtime_import_no_torch(tiny_bundle):
    bundle = tiny_bundle("sd15")
    assert_runs_without_torch(
        "import nitro_edge\n"
        f"s = nitro_edge.load({str(bundle)!r}, backend='onnx')\n"
        "s.generate('a red circle', steps=2)\n"
        "import nitro_edge.cli.main\n"
    )


def test_cli_help_imports_no_torch():
    assert_runs_without_torch(
        "from typer.testing import CliRunner\n"
        "from nitro_edge.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0 and 'export' in r.output, r.output\n"
    )


def test_the_embedded_model_runs_without_torch():
    """The first run a new user makes: the shipped default bundle on ONNX Runtime, torch never imported."""
    assert_runs_without_torch(
        "import nitro_edge\n"
        "from nitro_edge.default_model import default_bundle\n"
        "s = nitro_edge.load(default_bundle(), backend='onnx')\n"
        "assert s.generate('a red circle at the top left', output='numpy').shape == (1, 64, 64, 3)\n"
    )
