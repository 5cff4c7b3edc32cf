"""Progress for long ingests: a redrawn bar on a terminal, a plain line every `interval_s` (and at the end)
otherwise, which is what a pod's log shows. Time is a parameter."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, is_tty: bool | None = None,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty() if is_tty is None else is_tty
        self.interval_s, self.clock = interval_s, clock
        self.started = self._last = clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.is_tty:
            self._bar(now)
        elif now - self._last >= self.interval_s:
            self._line(now)
            self._last = now

    def _rate(self, now: float) -> float:
        return self.done / max(now - self.started, 1e-9)

    def _bar(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = int(30 * frac)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                          f"{self._rate(now):.1f}/s")
        self.stream.flush()

    def _line(self, now: float) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.stream.write(f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {self._rate(now):.1f}/s "
                          f"elapsed {now - self.started:.0f}s\n")
        self.stream.flush()

    def close(self) -> None:
        now = self.clock()
        if self.is_tty:
            self._bar(now)
            self.stream.write("\n")
        else:
            self._line(now)
        self.stream.flush()
