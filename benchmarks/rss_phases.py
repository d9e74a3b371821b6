"""Where a bundle's peak RSS comes from: one OpenVINO (or other backend) pipeline loaded and run
twice, with the peak and the current RSS (anonymous and file-backed) after each phase and each
component call. The kernel's peak counter is reset between phases (Linux /proc/self/clear_refs).

    python benchmarks/rss_phases.py BUNDLE [--backend openvino] [--precision int8-hybrid] [--memory low]

With --memory low each component is loaded, run and released in its phase; the peak is reported
after the previous one's release, after its load and compile, and after its call.
"""

from __future__ import annotations

import argparse

PROMPT = "a photograph of an astronaut riding a horse"


def _memory() -> dict[str, float]:
    """VmHWM (peak), VmRSS, RssAnon and RssFile of this process, GiB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                values[key] = int(value.split()[0]) / 2**20
    return values


def _report(phase: str) -> None:
    m = _memory()
    print(
        f"{phase:26s} peak {m['VmHWM']:.2f} GiB, now {m['VmRSS']:.2f} (anonymous {m['RssAnon']:.2f}, "
        f"file-backed {m['RssFile']:.2f})",
        flush=True,
    )
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="int8-hybrid")
    parser.add_argument("--memory", choices=("normal", "low"), default="normal")
    args = parser.parse_args(argv)
    import nitro_edge

    _report("import")
    sampler = nitro_edge.load(args.bundle, args.backend, precision=args.precision, memory=args.memory)
    _report("load and compile" if args.memory == "normal" else "open (components load per phase)")

    def reported(name, fn):
        if args.memory == "low":
            _report(f"  {name} load and compile")

        def call(**arrays):
            out = fn(**arrays)
            _report(f"  {name}" + (" call" if args.memory == "low" else ""))
            return out

        return call

    if args.memory == "low":
        components = sampler.components
        load = components.load  # the peak counter restarts once the previous component is released

        def fresh_load(names):
            _report("  (previous component released)")
            return load(names)

        components.load, components.wrap = fresh_load, reported
    else:
        sampler.components = {name: reported(name, fn) for name, fn in sampler.components.items()}
    for seed in range(2):
        sampler.generate(PROMPT, seed=seed)
        _report(f"after image {seed + 1}")


if __name__ == "__main__":
    main()
