"""A small progress bar on stderr (standard library only).

On a terminal the bar redraws in place; otherwise (CI logs, pipes) each bar
prints one line when it finishes, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 28


class _Bar:
    def __init__(
        self, owner: Progress, label: str, *, total: float, timed: bool, unit: str
    ) -> None:
        self._owner = owner
        self._label = label
        self._total = max(total, 1e-9)
        self._timed = timed
        self._unit = unit
        self._count = 0
        self._started = time.monotonic()
        self._drawn = 0.0
        self._closed = False
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self._count += n
        self._draw()

    def _fraction(self) -> float:
        done = time.monotonic() - self._started if self._timed else self._count
        return min(1.0, done / self._total)

    def _text(self) -> str:
        elapsed = time.monotonic() - self._started
        frac = self._fraction()
        filled = int(frac * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        if self._timed:
            detail = f"{elapsed:5.1f}/{self._total:.0f} s  {self._count:>10,} {self._unit}"
            if elapsed > 0:
                detail += f"  {self._count / elapsed:>8,.0f}/s"
        else:
            detail = f"{self._count:,}/{self._total:,.0f} {self._unit}  {elapsed:6.1f} s"
        return f"{self._label:<32} [{bar}] {frac * 100:3.0f}%  {detail}"

    def _draw(self, *, force: bool = False) -> None:
        if not self._owner.interactive or self._closed:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.2:
            return
        self._drawn = now
        self._owner.stream.write("\r" + self._text() + "\x1b[K")
        self._owner.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        if self._timed:
            self._total = min(self._total, time.monotonic() - self._started) or self._total
        text = self._text()
        self._closed = True
        stream = self._owner.stream
        if self._owner.interactive:
            stream.write("\r" + text + "\x1b[K\n")
        elif not self._owner.quiet:
            stream.write(text + "\n")
        stream.flush()


class Progress:
    """Factory of bars: ``counter`` (counts items) and ``phase`` (fills with time)."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = not quiet and self.stream.isatty()

    def counter(self, label: str, *, total: int, unit: str = "") -> _Bar:
        return _Bar(self, label, total=total, timed=False, unit=unit)

    def phase(self, label: str, *, seconds: float) -> _Bar:
        return _Bar(self, label, total=seconds, timed=True, unit="heartbeats")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()
