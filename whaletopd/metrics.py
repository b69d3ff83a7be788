"""The desktop's numbers in Prometheus' text format, for nginx to serve at /metrics.

Shape: whaletopd writes the whole text to one file (paths.metrics_file) whenever a
number changes, and nginx serves that file as a static one (nginx_conf.py: open, behind
a bearer token, or off).  The other shape, nginx proxying /metrics to a small HTTP
server of whaletopd's on a UNIX socket, would add a server thread, its socket and its
failure modes to the daemon for no number a file cannot carry; a file costs nothing
while nobody scrapes, and a scrape cannot reach whaletopd's loop at all.  The file is
replaced by rename (files.atomic_write): nginx opens either the old one or the new one,
never half of one.

What changes it, from whichever thread saw it (one lock; each write renders and
renames under a second lock, so an older snapshot never lands after a newer one):

    the loop        each transition (Desktop.on_transition_done): state, trigger,
                    restarts, the certificate's notAfter, connected clients
    the prober      each round of health checks: how long each check took
    an output pump  each `sign_in_failed` line of the sign-in service

Time is told the honest way for a file: `whaletop_start_time_seconds` (the wall-clock
time the daemon started, as Prometheus' process_start_time_seconds) never goes stale,
and `time() - whaletop_start_time_seconds` is the uptime.  An uptime gauge would only
be as fresh as the last write, so there is none.

A write that fails (a full disk) never touches the desktop: a warning once, a line
again when writes work.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from whaletopd import logs, machine
from whaletopd.files import atomic_write

log = logs.get("whaletopd")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIGN_IN_FAILED = "sign_in_failed"  # the sign-in service's event (webauth.py)
SIGN_IN_SERVICE = "webauth"  # its program's name (programs.py)
# Seconds: a check on a UNIX socket takes about a millisecond, the TLS WebSocket login
# tens; the probe timeout (2 s by default) bounds a failing one.
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels(**labels: str) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


class _Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)  # not cumulative: rendered cumulatively
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.sum += value

    def lines(self, name: str, **labels: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            out.append(f"{name}_bucket{_labels(**labels, le=_number(bound))} {total}")
        out.append(f'{name}_bucket{_labels(**labels, le="+Inf")} {self.count}')
        out.append(f"{name}_sum{_labels(**labels)} {_number(self.sum)}")
        out.append(f"{name}_count{_labels(**labels)} {self.count}")
        return out


class Metrics:
    """The numbers, and the file they are written to."""

    def __init__(self, path: Path, restartable: Iterable[str], *, tls: bool = False,
                 sign_in: bool = False, start_time: float | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._start_time = time.time() if start_time is None else start_time
        self._state = machine.INIT
        # Every label value known ahead is there from the first write, at 0: a counter
        # that appears only when it first counts hides its first increase from rate().
        self._transitions = {t["trigger"]: 0 for t in machine.TRANSITIONS}
        self._restarts = dict.fromkeys(restartable, 0)
        self._probes: dict[str, _Histogram] = {}
        self._tls = tls
        self._not_after: float | None = None
        self._clients: int | None = None
        self._sign_in = sign_in
        self._sign_in_failures = 0
        self._write_error: OSError | None = None

    # -- the loop's ---------------------------------------------------------------------

    def transition(self, trigger: str) -> None:
        with self._lock:
            self._transitions[trigger] = self._transitions.get(trigger, 0) + 1

    def restarted(self, child: str) -> None:
        with self._lock:
            self._restarts[child] = self._restarts.get(child, 0) + 1

    def publish(self, state: str, clients: int | None = None,
                not_after: float | None = None) -> None:
        """What the loop knows after a transition, then the file."""
        with self._lock:
            self._state, self._clients, self._not_after = state, clients, not_after
        self.write()

    # -- other threads' -----------------------------------------------------------------

    def observe_probes(self, seconds: Mapping[str, float], write: bool = True) -> None:
        """The prober's thread, after each round: how long each check took.  `write`
        False: counted, and in the file at its next write (rendering and writing it is
        ~1 ms, more than a cheap round's checks)."""
        with self._lock:
            for name, value in seconds.items():
                self._probes.setdefault(name, _Histogram(PROBE_BUCKETS)).observe(value)
        if write:
            self.write()

    def child_event(self, child: str, event: str) -> None:
        """An output pump's thread: each JSON line of a child (its `event`)."""
        if child == SIGN_IN_SERVICE and event == SIGN_IN_FAILED:
            with self._lock:
                self._sign_in_failures += 1
            self.write()

    # -- the text -----------------------------------------------------------------------

    def render(self) -> str:
        with self._lock:
            return self._render()

    def _render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, text: str, samples: Iterable[str]) -> None:
            out.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples])

        family("whaletop_state", "gauge",
               "The desktop's state (status file word): 1 for the current one.",
               (f"whaletop_state{_labels(state=s)} {int(s == self._state)}"
                for s in machine.STATES))
        family("whaletop_transitions_total", "counter",
               "Transitions of the desktop's state machine, by trigger.",
               (f"whaletop_transitions_total{_labels(trigger=t)} {n}"
                for t, n in sorted(self._transitions.items())))
        family("whaletop_child_restarts_total", "counter",
               "Restarts of each restartable child (websockify, nginx, the session, ...).",
               (f"whaletop_child_restarts_total{_labels(child=c)} {n}"
                for c, n in sorted(self._restarts.items())))
        family("whaletop_probe_duration_seconds", "histogram",
               "How long each health check took, passed or failed.",
               (line for name, hist in sorted(self._probes.items())
                for line in hist.lines("whaletop_probe_duration_seconds", probe=name)))
        if self._tls and self._not_after is not None:
            family("whaletop_certificate_not_after_seconds", "gauge",
                   "notAfter of the TLS certificate in service, in Unix seconds.",
                   [f"whaletop_certificate_not_after_seconds {_number(self._not_after)}"])
        if self._clients is not None:
            family("whaletop_connected_clients", "gauge",
                   "VNC clients connected to the desktop (whaletopd's checks not counted).",
                   [f"whaletop_connected_clients {self._clients}"])
        if self._sign_in:
            family("whaletop_sign_in_failures_total", "counter",
                   "Sign-ins refused for a wrong name or password.",
                   [f"whaletop_sign_in_failures_total {self._sign_in_failures}"])
        family("whaletop_start_time_seconds", "gauge",
               "When whaletopd started, in Unix seconds (uptime: time() minus this).",
               [f"whaletop_start_time_seconds {_number(round(self._start_time, 3))}"])
        return "\n".join(out) + "\n"

    def write(self) -> None:
        """The file, replaced whole (no fsync: it is written again at the next change,
        and a crash loses nothing a new start does not reset)."""
        with self._write_lock:
            text = self.render()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # nginx's worker (another account when whaletopd is root) reads it.
                self.path.parent.chmod(0o755)
                atomic_write(self.path, text, mode=0o644, durable=False)
            except OSError as exc:
                if self._write_error is None:
                    log.warning("metrics_write_failed", path=str(self.path),
                                reason=exc.strerror or str(exc),
                                hint="/metrics shows the numbers before until the folder "
                                     "takes writes again (free space on its disk)")
                self._write_error = exc
                return
            if self._write_error is not None:
                log.info("metrics_write_recovered", path=str(self.path))
            self._write_error = None
