"""Capped exponential backoff with jitter (full-jitter style, bounded below by half the step)."""

from __future__ import annotations

import random


class Backoff:
    """``next()`` returns the delay before the next attempt; ``reset()`` after a success.

    Delays grow ``initial * factor**n`` up to ``maximum``; each is scaled by a
    random factor in ``[1 - jitter, 1]`` so that many clients that failed together
    do not retry together.
    """

    def __init__(
        self,
        *,
        initial: float = 0.1,
        maximum: float = 7.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial}, {maximum}")
        if factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need factor >= 1 and 0 <= jitter <= 1")
        self._initial = initial
        self._maximum = maximum
        self._factor = factor
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._step = initial
        self.attempts = 0

    def next(self) -> float:
        step = self._step
        self._step = min(self._step * self._factor, self._maximum)
        self.attempts += 1
        return step * (1 - self._jitter * self._rng.random())

    def reset(self) -> None:
        self._step = self._initial
        self.attempts = 0
