"""Progress display for long fits: a live line on a terminal, log lines otherwise.

Pass an instance as ``callback=`` to :meth:`bignmf.NMF.fit_transform` (the CLI does).
Each update shows the iteration, the objective, its relative decrease, seconds per
iteration and the time left if the fit runs to ``max_iter`` (an upper bound: ``tol``
usually stops it sooner).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from bignmf.fit import IterationInfo

logger = logging.getLogger("bignmf.progress")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_line(info: IterationInfo) -> str:
    """One human-readable progress line for an iteration."""
    per_iter = info.elapsed / info.iteration
    left = per_iter * (info.max_iter - info.iteration)
    return (
        f"iter {info.iteration:>4d}/{info.max_iter}  objective {info.objective:.6g}  "
        f"rel.decrease {info.rel_decrease:.2e}  {info.seconds:.2f} s/it  "
        f"elapsed {_duration(info.elapsed)}  left <= {_duration(left)}"
    )


class Progress:
    """Callback printing a live progress line (terminal) or one line per ``log_every``
    seconds (files, pipes, batch-job logs) — through :mod:`logging` (logger
    ``bignmf.progress``), or written to ``stream`` with ``use_logging=False``
    (``NMF(verbose=1)`` prints every iteration that way, as scikit-learn does)."""

    def __init__(self, stream: TextIO | None = None, log_every: float = 10.0,
                 use_logging: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.log_every = log_every
        self.use_logging = use_logging
        self._last_log = -float("inf")
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, info: IterationInfo) -> None:
        line = format_line(info)
        if self._live:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every or info.iteration == info.max_iter:
            self._last_log = now
            if self.use_logging:
                logger.info(line)
            else:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """End the live line (call once the fit returns)."""
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
