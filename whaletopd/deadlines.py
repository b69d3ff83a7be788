"""Time, kept by the loop: named deadlines, each of which becomes an event when due.

There are no timer threads.  The loop waits on the queue only until the next deadline
(`timeout()`), then takes the due one (`pop_due()`) and dispatches its event like any
other.  Arming a name again replaces its deadline and cancelling forgets it, so a
deadline that was re-armed or cancelled can never fire late: only what is in the table
when the loop looks can fire at all.

The loop owns them; the one other thread that arms one is the provisioning worker
(the certificate's first expiry check), so the table takes a lock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from whaletopd.events import Event


@dataclass(order=True)
class _Entry:
    due: float
    seq: int  # two deadlines due at once fire in the order they were armed
    name: str = field(compare=False)
    event: Event = field(compare=False)


class Deadlines:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._armed: dict[str, _Entry] = {}
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def arm(self, name: str, seconds: float, event: Event) -> None:
        """`event` is dispatched `seconds` from now, unless `name` is re-armed or cancelled."""
        with self._lock:
            entry = _Entry(self._clock() + max(0.0, seconds), next(self._seq), name, event)
            self._armed[name] = entry
            heapq.heappush(self._heap, entry)

    def cancel(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._armed.pop(name, None)

    def cancel_all(self) -> None:
        with self._lock:
            self._armed.clear()
            self._heap.clear()

    def armed(self, name: str) -> bool:
        return name in self._armed

    def names(self) -> list[str]:
        return sorted(self._armed)

    def _head(self) -> _Entry | None:
        # Entries replaced or cancelled stay in the heap until they reach its top.
        while self._heap and self._armed.get(self._heap[0].name) is not self._heap[0]:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def timeout(self) -> float | None:
        """Seconds until the next deadline (0 when one is due), None when none is armed."""
        with self._lock:
            head = self._head()
            return None if head is None else max(0.0, head.due - self._clock())

    def pop_due(self) -> Event | None:
        """The earliest deadline that is due, forgotten as it is returned; else None."""
        with self._lock:
            head = self._head()
            if head is None or head.due > self._clock():
                return None
            heapq.heappop(self._heap)
            del self._armed[head.name]
            return head.event
