"""Faults: interrupted or failing exports leave the destination as it was; a killed training run
resumes and ends exactly where the uninterrupted run ends."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from nitro_edge.bundle import Bundle  # noqa: E402
from nitro_edge.export import export_bundle  # noqa: E402

CLI = [sys.executable, "-m", "nitro_edge.cli.main"]


@pytest.mark.slow  # a long fault test: a whole export in a child, interrupted
def test_ctrl_c_during_export_leaves_no_bundle(tiny_source, tmp_path):
    out = tmp_path / "bundle"
    # SIGINT as a terminal delivers it: a shell starting this test run in the background (nohup ... &)
    # leaves SIGINT ignored, children inherit that, and the export then runs to completion.
    proc = subprocess.Popen(
        [*CLI, "export", str(tiny_source("sdxl")), "-o", str(out), "--target", "onnx"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stderr:
        if "generator: tracing" in line:
            proc.send_signal(signal.SIGINT)
            break
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_disk_full_during_export_keeps_the_previous_bundle(tiny_source, tmp_path, monkeypatch):
    out = export_bundle(tiny_source("sd15"), tmp_path / "bundle", targets=["onnx"], precision="fp32")
    before = json.loads((out / "manifest.json").read_text())
    import nitro_edge.export.onnx as onnx_target

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_target, "_save", full)
    with pytest.raises(OSError, match="No space left"):
        export_bundle(tiny_source("sd15"), out, targets=["onnx"], precision="fp16")
    assert json.loads((out / "manifest.json").read_text()) == before
    Bundle.open(out)  # every file still matches its checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_disk_full_during_checkpoint_keeps_the_previous_one(tiny_source, tmp_path, monkeypatch):
    from nitro_edge.training import checkpoint
    from nitro_edge.training.config import load_config
    from nitro_edge.training.train import train

    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    cfg = load_config(
        None,
        dict(
            teacher=str(tiny_source("sd15")),
            prompts=str(tmp_path / "p.txt"),
            output=str(tmp_path / "run"),
            max_steps=4,
            checkpoint_every=2,
            pool_size=60,
            teacher_steps=1,
            sample_every=100,
        ),
    )
    real_save = checkpoint.save
    calls = []

    def save(root, step, *args, **kwargs):
        calls.append(step)
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(root, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, progress=False)
    assert calls == [2, 4]
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == "step_00000002"
    assert json.loads((tmp_path / "run/checkpoints/step_00000002/state.json").read_text())["step"] == 2


@pytest.mark.slow  # a long fault test: three training processes
def test_kill_9_during_training_then_resume_matches_the_uninterrupted_run(tiny_source, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\na blue square\na green triangle\n")
    args = [
        "train",
        "--teacher",
        str(tiny_source("sd15")),
        "--prompts",
        str(tmp_path / "p.txt"),
        "--max-steps",
        "8",
        "--set",
        "checkpoint_every=2",
        "--set",
        "pool_size=60",
        "--set",
        "teacher_steps=1",
        "--set",
        "sample_every=100",
        "--set",
        "keep_checkpoints=10",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*CLI, *args, "--output", str(tmp_path / "whole")], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    victim = subprocess.Popen([*CLI, *args, "--output", str(tmp_path / "killed")], stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "killed/checkpoints/step_00000002").exists():
        assert time.time() < deadline and victim.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = sorted(p.name for p in (tmp_path / "killed/checkpoints").glob("step_*"))
    assert "step_00000008" not in done
    resumed = subprocess.run(
        [*CLI, *args, "--output", str(tmp_path / "killed")], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "whole/checkpoints/step_00000008/student.safetensors"))
    b = load_file(str(tmp_path / "killed/checkpoints/step_00000008/student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_onnx_external_data_outside_the_artifact_is_refused(tiny_source, tmp_path):
    """A graph whose weights point outside its listed files is refused, even with a valid manifest."""
    import onnx

    import nitro_edge
    from nitro_edge.bundle import file_entries
    from nitro_edge.errors import BundleError

    out = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], precision="fp32")
    path = out / "onnx" / "fp32" / "vae_decoder.onnx"
    onnx.save_model(
        onnx.load(str(path)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:  # what onnx.save refuses to write, an attacker writes by hand
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../outside.bin"
    path.write_bytes(model.SerializeToString())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = file_entries(out)  # an attacker can rewrite checksums too
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="reads weights from '../../../outside.bin'"):
        nitro_edge.load(out, backend="onnx")


@pytest.mark.parametrize(
    "target, name", [("onnx", "generator.onnx"), pytest.param("openvino", "generator.xml", marks=pytest.mark.slow)]
)
def test_truncated_artifact_with_a_rewritten_manifest_fails_in_one_line(tiny_source, tmp_path, target, name):
    """Even when an attacker also rewrites the checksums, a truncated model file gives a BundleError."""
    import nitro_edge
    from nitro_edge.bundle import file_entries
    from nitro_edge.errors import BundleError

    out = export_bundle(tiny_source("sd15"), tmp_path / "b", targets=[target], precision="fp32")
    path = out / target / "fp32" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = file_entries(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot load|not a readable ONNX model") as err:
        nitro_edge.load(out, backend=target)
    assert "\n" not in str(err.value)


def test_missing_extra_names_the_pip_command(tiny_bundle, monkeypatch):
    """A backend whose package is not installed: the error names the extra to install."""
    import builtins

    import nitro_edge
    from nitro_edge.errors import MissingExtraError

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'nitro-edge\[openvino\]'"):
        nitro_edge.load(tiny_bundle("sd15"), backend="openvino")


def test_leftovers_of_a_killed_export_are_removed(tiny_source, tmp_path):
    """SIGKILL leaves the temporary folders behind; the next export of the same bundle removes
    those whose process is gone and keeps those of a live one."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    left = [tmp_path / f".b.partial-{dead}", tmp_path / f".b.scratch-{dead}"]
    live = tmp_path / f".b.partial-{os.getppid()}"
    for path in [*left, live]:
        (path / "onnx").mkdir(parents=True)
        (path / "onnx" / "generator.onnx").write_bytes(b"half written")
    messages = []
    export_bundle(tiny_source("sd15"), tmp_path / "b", targets=["onnx"], shift=500, report=messages.append)
    assert not any(p.exists() for p in left) and live.exists()
    assert f"removed .b.partial-{dead}, left by an export that was killed" in messages
