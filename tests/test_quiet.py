"""Quiet by default: nitro-edge's own lines on screen, the libraries' output in a log file."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
CLI = [sys.executable, "-m", "nitro_edge.cli.main"]
# What the converters print on their own (NNCF's tables, ONNX Runtime's notices, coremltools' bars).
THIRD_PARTY = ("bitwidth distribution", "Please consider to run pre-processing", "Running MIL", "Failed to load _ML")


def run(args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def test_export_shows_its_phases_and_hides_the_converters_unless_verbose(tiny_source, tmp_path):
    quiet = run(["export", tiny_source("sd15"), "-o", tmp_path / "a", "--target", "openvino", "--precision", "int8"])
    assert quiet.returncode == 0, quiet.stderr
    shown = quiet.stdout + quiet.stderr
    assert not any(line in shown for line in THIRD_PARTY), shown
    for phase in (
        "torch reference: recorded in",
        "generator: tracing",
        "generator: openvino int8 written in",
        "openvino int8: parity passed",
        "done in",
    ):
        assert phase in quiet.stderr, quiet.stderr
    assert not (tmp_path / ".a.export.log").exists()  # removed after a successful export

    loud = run(
        [
            "export",
            tiny_source("sd15"),
            "-o",
            tmp_path / "b",
            "--target",
            "openvino",
            "--precision",
            "int8",
            "--verbose",
        ]
    )
    assert loud.returncode == 0, loud.stderr
    assert "bitwidth distribution" in loud.stdout + loud.stderr and "openvino int8: parity passed" in loud.stderr


def test_warnings_that_matter_stay_visible_in_our_words(tiny_source, tmp_path):
    pytest.importorskip("coremltools")
    if sys.platform == "darwin":
        pytest.skip("on macOS Core ML's parity is checked numerically")
    r = run(["export", tiny_source("sd15"), "-o", tmp_path / "c", "--target", "coreml", "--precision", "fp16"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: coreml fp16: numeric parity NOT checked (coreml predicts on macOS only)") == 1
    assert not any(line in r.stdout + r.stderr for line in THIRD_PARTY), r.stderr


def test_captured_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path):
    code = (
        "import os, sys, logging\n"
        "from pathlib import Path\n"
        "from nitro_edge.cli.quiet import captured\n"
        "with captured(Path(sys.argv[1])) as console:\n"
        "    os.write(1, b'C-level stdout\\n'); os.write(2, b'C-level stderr\\n')\n"
        "    print('python print'); logging.getLogger('somelib').warning('library warning')\n"
        "    logging.getLogger('nitro_edge.x').warning('our warning')\n"
        "    console.print('our line')\n"
        "print('after')\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "log")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "log").read_text()
    assert all(s in log for s in ("C-level stdout", "C-level stderr", "python print", "library warning"))
    assert "our line" in r.stderr and "our warning" in r.stderr and "after" in r.stdout
    assert not any(s in r.stdout + r.stderr for s in ("C-level", "python print", "library warning"))


def test_a_failed_export_points_to_the_log(tiny_source, tmp_path):
    """A parity failure after the converters have printed: one error line naming the kept log."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(  # an impossible int8 floor, in the child only
        "from nitro_edge.export import parity\n"
        "parity.FLOORS = {**parity.FLOORS, 'int8': parity.FLOORS['int8'].__class__(psnr_db=200.0)}\n"
    )
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(tmp_path / "site")}
    out = tmp_path / "b"
    r = subprocess.run(
        [*CLI, "export", str(tiny_source("sd15")), "-o", str(out), "--target", "openvino", "--precision", "int8"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    log = tmp_path / ".b.export.log"
    assert last.startswith("error: openvino int8: end-to-end PSNR") and f"the converters' output is in {log}" in last
    assert "bitwidth distribution" in log.read_text() and not out.exists()


@pytest.mark.slow  # the demo exports to every target at three precisions (about 2 minutes)
@pytest.mark.parametrize("verbose", [False, True])
def test_the_demo_prints_its_own_lines_only_unless_verbose(verbose, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "nitro_edge.demo", "--out", str(tmp_path / "demo")] + (["--verbose"] if verbose else []),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    shown = r.stdout + r.stderr
    assert "parity passed" in shown and "grid:" in shown and "torch fp32 at 4 steps" in shown
    if verbose:
        assert any(line in shown for line in THIRD_PARTY)
    else:
        assert not any(line in shown for line in THIRD_PARTY), shown
        assert len(shown.strip().splitlines()) <= 40, shown
        assert (tmp_path / "demo" / "export.log").stat().st_size > 0
