"""Quiet by default: what nitro-edge says on the terminal, and everything the libraries under it
print (progress bars, tables, import-time notices, C-level output) in a log file instead.

`captured(log)` points the process's stdout and stderr (file descriptors 1 and 2, so C and C++
output too) at `log` and yields a console on the real terminal; `Phases` prints one line per
finished phase and, on a terminal, a live line for the running one with its elapsed time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path


@contextlib.contextmanager
def captured(log: Path | None, verbose: bool = False):
    """Route third-party output to `log` (unless `verbose` or `log` is None); yields the terminal's console."""
    from rich.console import Console

    if verbose or log is None:
        yield Console(stderr=True, log_path=False, soft_wrap=True)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    console = Console(file=terminal, log_path=False, force_terminal=terminal.isatty() or None, soft_wrap=True)
    ours = logging.getLogger("nitro_edge")
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as sink, warnings.catch_warnings():
        warnings.simplefilter("default")  # shown once each, into the log
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        env = {k: os.environ.get(k) for k in ("TQDM_DISABLE",)}
        os.environ["TQDM_DISABLE"] = "1"  # progress bars of the libraries (tqdm honours it)
        ours.addHandler(handler)
        before = ours.propagate
        ours.propagate = False
        try:
            yield console
        finally:
            ours.propagate = before
            ours.removeHandler(handler)
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


class Phases:
    """export_bundle's report(): a message ending in "…" starts a phase, any other is a finished line.
    On a terminal the running phase is one live line with its elapsed time; elsewhere (a pipe, a CI
    log) each start is printed as a line, since nothing would show it otherwise."""

    def __init__(self, console, keep=lambda message: True):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console, self.keep = console, keep
        self.live = console.is_terminal
        self._progress = None
        if self.live:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
            )
            self._task = self._progress.add_task("", total=None)

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, message: str) -> None:
        if message.endswith("…"):
            if self._progress is not None:
                self._progress.reset(self._task, description=message[:-1].rstrip())
            elif self.keep(message):
                self.console.print(message, highlight=False)
        elif self.keep(message):
            style = "yellow" if message.startswith("warning:") else None
            self.console.print(message, style=style, highlight=False)
