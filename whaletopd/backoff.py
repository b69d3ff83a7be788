"""How often a stateless child may be restarted: bounded attempts in a sliding window,
each after an exponentially longer delay."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Restart:
    """A restart policy (a row of programs.py): the delay doubles from `first_delay` up
    to `max_delay`, at most `attempts` restarts in `window` seconds."""

    attempts: int = 5
    window: float = 60.0
    first_delay: float = 0.1
    max_delay: float = 5.0


class RestartBudget:
    """One child's restarts so far, judged by its policy."""

    def __init__(self, policy: Restart, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = policy.attempts
        self.window = policy.window
        self._first = policy.first_delay
        self._max = policy.max_delay
        self._clock = clock
        self._times: deque[float] = deque()

    def _prune(self) -> None:
        horizon = self._clock() - self.window
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def allowed(self) -> bool:
        self._prune()
        return len(self._times) < self.attempts

    def used(self) -> int:
        self._prune()
        return len(self._times)

    def record(self) -> float:
        """Count one restart; return how long to wait before doing it."""
        self._prune()
        self._times.append(self._clock())
        return min(self._max, self._first * 2.0 ** (len(self._times) - 1))

    def refill_in(self) -> float:
        """Seconds until one more attempt is allowed (0 when one is allowed now)."""
        self._prune()
        if len(self._times) < self.attempts:
            return 0.0
        return max(0.0, self._times[0] + self.window - self._clock())
