"""`nitro-edge bench`: per backend and precision, in a fresh process each (so peak RSS is its
own): cold start (load and compile), warm per-component latency, end-to-end latency, peak RSS,
size on disk. Prints a table, and writes JSON and a PNG chart on request."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a red circle at the top left"


def measure(
    bundle: str,
    backend: str,
    precision: str,
    runs: int,
    steps: int,
    options: dict | None = None,
    memory: str = "normal",
    prompt: str = PROMPT,
    image: str | None = None,
) -> dict:
    """One backend x precision (with backend `options`), in this process. With memory="low" the
    component times include loading each component (what that mode costs). The warm-up's image
    (seed 0) is saved to `image` if given."""
    import nitro_edge
    from nitro_edge.bundle import Bundle
    from nitro_edge.sampler import OnDemand

    t0 = time.perf_counter()
    sampler = nitro_edge.load(bundle, backend, precision=precision, memory=memory, **(options or {}))
    cold = time.perf_counter() - t0
    timings: dict[str, list[float]] = {n: [] for n in Bundle.open(bundle, verify=False).specs}

    def timed(name, fn):
        def call(**arrays):
            start = time.perf_counter()
            out = fn(**arrays)
            timings[name].append(time.perf_counter() - start)
            return out

        return call

    if isinstance(sampler.components, OnDemand):
        sampler.components.wrap = timed
    else:
        sampler.components = {name: timed(name, fn) for name, fn in sampler.components.items()}
    first = sampler.generate(prompt, steps=steps, seed=0)  # warm-up
    if image:
        first[0].save(image)
    for v in timings.values():
        v.clear()
    ends = []
    for i in range(runs):
        start = time.perf_counter()
        sampler.generate(prompt, steps=steps, seed=i)
        ends.append(time.perf_counter() - start)
    b = Bundle.open(bundle, verify=False)
    from nitro_edge import registry

    target = registry.backend(backend).target
    size = None
    if target:
        size = sum(
            b.manifest["files"][f]["bytes"]
            for c in b.manifest["components"].values()
            for f in c["artifacts"][target][precision]["files"]
        )
    return {
        "backend": backend,
        "precision": precision,
        "options": options or {},
        "memory": memory,
        "steps": steps,
        "runs": runs,
        "cold_start_s": round(cold, 3),
        "end_to_end_s": _stats(ends),
        "components_s": {n: _stats(v) for n, v in timings.items()},
        "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
        "size_mib": round(size / 2**20, 2) if size is not None else None,
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux from /proc (VmHWM): getrusage's ru_maxrss keeps
    the parent's peak across fork and exec, so a child started by a large process (a test run)
    would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def run_all(
    bundle: str, backends: list[str], runs: int, steps: int, report=print, memory: str = "normal"
) -> tuple[list[dict], list[dict]]:
    """Every (backend, precision) the bundle holds for `backends`, each in a child process.

    Returns (results, problems): a problem is a backend skipped here (not installed, or it cannot
    run on this platform) or a run that failed, with the reason; neither is hidden.
    """
    from nitro_edge import registry
    from nitro_edge.bundle import Bundle

    held = Bundle.open(bundle).targets()
    results, problems = [], []
    for name in backends:
        backend = registry.backend(name)
        for precision in held.get(backend.target or "", []):
            why = (
                f"not installed (`pip install 'nitro-edge[{backend.extra}]'`)"
                if not backend.installed()
                else None
                if backend.predicts_here()
                else f"runs on {backend.platforms} only"
            )
            if why:
                report(f"bench {name} {precision}: skipped, {why}")
                problems.append({"backend": name, "precision": precision, "status": "skipped", "reason": why})
                continue
            report(f"bench {name} {precision}")
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nitro_edge.bench",
                    bundle,
                    name,
                    precision,
                    str(runs),
                    str(steps),
                    "{}",
                    memory,
                ],
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                report(f"bench {name} {precision}: FAILED, {last}")
                problems.append({"backend": name, "precision": precision, "status": "failed", "reason": last})
                continue
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    return results, problems


def plot(results: list[dict], path: Path) -> None:
    """A bar chart of warm end-to-end latency (median, min-max whiskers) per backend and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\n{r['precision']}" for r in results]
    med = [r["end_to_end_s"]["median"] for r in results]
    err = [
        [m - r["end_to_end_s"]["min"] for m, r in zip(med, results)],
        [r["end_to_end_s"]["max"] - m for m, r in zip(med, results)],
    ]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(results)), 3.5))
    ax.bar(labels, med, yerr=err, capsize=4, color="#4c72b0")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_title(f"{results[0]['steps']}-step generation, median of {results[0]['runs']} warm runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    bundle, backend, precision, runs, steps = sys.argv[1:6]
    options = json.loads(sys.argv[6]) if len(sys.argv) > 6 else None  # backend options, as JSON
    memory = sys.argv[7] if len(sys.argv) > 7 else "normal"
    print(json.dumps(measure(bundle, backend, precision, int(runs), int(steps), options, memory)))
