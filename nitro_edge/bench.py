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


def measure(bundle: str, backend: str, precision: str, runs: int, steps: int, options: dict | None = None) -> dict:
    """One backend x precision (with backend `options`), in this process."""
    import nitro_edge
    from nitro_edge.bundle import Bundle

    t0 = time.perf_counter()
    sampler = nitro_edge.load(bundle, backend, precision=precision, **(options or {}))
    cold = time.perf_counter() - t0
    timings: dict[str, list[float]] = {n: [] for n in sampler.components}
    for name, fn in list(sampler.components.items()):

        def timed(_fn=fn, _name=name, **arrays):
            start = time.perf_counter()
            out = _fn(**arrays)
            timings[_name].append(time.perf_counter() - start)
            return out

        sampler.components[name] = timed
    sampler.generate(PROMPT, steps=steps, seed=0)  # warm-up
    for v in timings.values():
        v.clear()
    ends = []
    for i in range(runs):
        start = time.perf_counter()
        sampler.generate(PROMPT, steps=steps, seed=i)
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
        "steps": steps,
        "runs": runs,
        "cold_start_s": round(cold, 3),
        "end_to_end_s": _stats(ends),
        "components_s": {n: _stats(v) for n, v in timings.items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "size_mib": round(size / 2**20, 2) if size is not None else None,
    }


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def run_all(bundle: str, backends: list[str], runs: int, steps: int, report=print) -> tuple[list[dict], list[dict]]:
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
                [sys.executable, "-m", "nitro_edge.bench", bundle, name, precision, str(runs), str(steps)],
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
    print(json.dumps(measure(bundle, backend, precision, int(runs), int(steps), options)))
