"""The desktop's lifecycle: states and transitions as plain tables.

The daemon (loop.py) and the diagram generator (diagram.py) build their machines from
these same tables, so state_diagrams/ cannot describe a different machine than the one
that runs.  Callback names refer to methods of desktop.Desktop, which hands the work
to the part that owns it.

Status words: STARTING, STARTED and HEALTHY keep the original project's meaning;
UNHEALTHY, STOPPING, STOPPED and FAILED are what it left out.  INIT is never written.
IDLE (--stop-when-idle) is HEALTHY with nobody connected and a stop coming.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine

INIT = "INIT"
STARTING = "STARTING"
STARTED = "STARTED"
HEALTHY = "HEALTHY"
IDLE = "IDLE"
UNHEALTHY = "UNHEALTHY"
STOPPING = "STOPPING"
STOPPED = "STOPPED"
FAILED = "FAILED"

RECOVERING = "RECOVERING"
RELOADING_TLS = "RELOADING_TLS"

STATES: list[str] = [INIT, STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS,
                     UNHEALTHY, STOPPING, STOPPED, FAILED]
UP = [STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS]  # launched: the user's windows exist
SERVING = [HEALTHY, IDLE]  # a user can connect now; checks judge both alike
LIVE = [STARTING, *UP]

TRANSITIONS: list[dict[str, Any]] = [
    # Provisioning (user, sudo, password), then the children of programs.py's table, each
    # once what it waits for is ready: Xvnc and websockify, then (when Xvnc said it is
    # ready through -displayfd) the LXDE session.  Provisioning and mapping /Apps run in
    # worker threads (either may block on a hung mount), so stop signals and the startup
    # deadline are served meanwhile; /Apps is mapped while Xvnc and websockify start.
    # A status folder that cannot be written (mounted read-only) is FAILED at once.
    {"trigger": "start", "source": INIT, "dest": STARTING, "after": "provision"},
    {"trigger": "provisioned", "source": STARTING, "dest": None,
     "after": ["launch", "start_menu"]},
    {"trigger": "apps_mapped", "source": [*LIVE, UNHEALTHY], "dest": None,
     "after": "menu_mapped"},
    {"trigger": "child_ready", "source": STARTING, "dest": None,
     "after": ["mark_ready", "launch"]},
    {"trigger": "launched", "source": STARTING, "dest": STARTED, "after": "start_probes"},
    # HEALTHY means a user can connect now: X display, VNC login, noVNC page and a VNC
    # login through websockify's WebSocket all answer, and every child runs (no check
    # looks at the session).  Verdicts of checks older than the last restart are stale.
    {"trigger": "probe_passed", "source": [STARTED, RECOVERING, RELOADING_TLS],
     "dest": HEALTHY, "conditions": "all_running", "unless": "stale"},
    # Only with --no-exit-on-failure does UNHEALTHY wait, and so can recover.
    {"trigger": "probe_passed", "source": UNHEALTHY, "dest": HEALTHY,
     "conditions": "all_running", "unless": ["exit_on_failure", "stale"]},
    # An optional child (sound) that dies is restarted (later again when its budget is
    # used up), whatever the state: the desktop's state never changes for it.
    {"trigger": "child_exited", "source": [*LIVE, UNHEALTHY], "dest": None,
     "conditions": "optional", "unless": "stale", "after": "repair_optional"},
    {"trigger": "restart_due", "source": [*LIVE, UNHEALTHY], "dest": None,
     "conditions": "optional", "after": "restart_optional"},
    # Logout (the session ends as lxsession-logout ends it): the person asked to stop.
    {"trigger": "child_exited", "source": LIVE, "dest": STOPPING,
     "conditions": "logged_out", "unless": "stale", "before": "note_logout"},
    {"trigger": "child_exited", "source": UNHEALTHY, "dest": STOPPING,
     "conditions": "logged_out", "unless": ["stale", "exit_on_failure"],
     "before": "note_logout"},
    # A restartable child (websockify, nginx, the sign-in service: no user state; the
    # session: the X server keeps running) is restarted (with backoff, a bounded number
    # of times in a window) instead of giving up the desktop; with its budget used up it
    # is UNHEALTHY, and with --no-exit-on-failure it is tried again once the budget
    # allows (retry_later).  Xvnc dying loses the user's windows: UNHEALTHY at once.
    # Exits of replaced children are stale: ignored.
    {"trigger": "probe_failed", "source": SERVING, "dest": RECOVERING,
     "conditions": "restartable", "unless": "stale", "after": "recover"},
    {"trigger": "probe_failed", "source": SERVING, "dest": UNHEALTHY,
     "conditions": "retryable", "unless": "stale", "after": "retry_later"},
    {"trigger": "probe_failed", "source": SERVING, "dest": UNHEALTHY, "unless": "stale"},
    {"trigger": "child_exited", "source": UP, "dest": RECOVERING,
     "conditions": "restartable", "unless": "stale", "after": "recover"},
    {"trigger": "child_exited", "source": UP, "dest": UNHEALTHY,
     "conditions": "retryable", "unless": "stale", "after": "retry_later"},
    {"trigger": "child_exited", "source": LIVE, "dest": UNHEALTHY, "unless": "stale"},
    {"trigger": "child_exited", "source": UNHEALTHY, "dest": None,
     "conditions": "retryable", "unless": "stale", "after": "retry_later"},
    # Due, and still repairable: a session whose X server died meanwhile is not (its
    # exit can come before Xvnc's), and the reason stays the X server's.
    {"trigger": "restart_due", "source": [RECOVERING, UNHEALTHY], "dest": None,
     "conditions": "repairable", "after": "restart_child"},
    {"trigger": "recovery_timed_out", "source": [RECOVERING, RELOADING_TLS], "dest": UNHEALTHY},
    {"trigger": "startup_timed_out", "source": [STARTING, STARTED], "dest": UNHEALTHY},
    # TLS rotation: a changed --tls-certificate is validated first (a bad one is refused,
    # logged, and the old one stays in service); a good one is reloaded by nginx
    # gracefully (connected sessions stay); HEALTHY again once served.
    {"trigger": "certificate_changed", "source": SERVING, "dest": RELOADING_TLS,
     "conditions": "new_certificate_valid", "after": "reload_certificate"},
    {"trigger": "certificate_changed", "source": UNHEALTHY, "dest": RELOADING_TLS,
     "conditions": ["expiry_is_the_problem", "new_certificate_valid"],
     "after": "reload_certificate"},
    {"trigger": "certificate_changed", "source": [STARTING, STARTED, RECOVERING, RELOADING_TLS],
     "dest": None, "after": "defer_certificate"},
    # Sign-in: a changed --web-users is validated and in service at once (a bad one is
    # refused, the old one stays); nothing restarts.
    {"trigger": "web_users_changed", "source": [*LIVE, UNHEALTHY], "dest": None,
     "after": "reload_web_users"},
    # Keyboard: the page asked for another layout (kbswitch.py; a signed-in person with
    # full access, through nginx's WebDAV PUT).  Applied off the loop's thread while the
    # X server runs, one request at a time; keyboard_switched ends one.  Before the X
    # server is up, or UNHEALTHY, a request is refused with a line.
    {"trigger": "keyboard_asked", "source": UP, "dest": None, "after": "switch_keyboard"},
    {"trigger": "keyboard_asked", "source": [STARTING, UNHEALTHY], "dest": None,
     "after": "refuse_keyboard"},
    {"trigger": "keyboard_switched", "source": [*LIVE, UNHEALTHY], "dest": None,
     "after": "keyboard_switched_done"},
    # /Apps: .desktop files created, changed or removed while the desktop runs; mapped
    # off the loop's thread, one mapping at a time (apps_mapped ends one).
    {"trigger": "apps_changed", "source": [*LIVE, UNHEALTHY], "dest": None,
     "after": "map_apps"},
    # Until the session's menu-cached watches the menu folder, look again and again;
    # then make it read again what was mapped while it was starting.
    {"trigger": "menu_check_due", "source": [*UP, UNHEALTHY], "dest": None,
     "after": "check_menu"},
    # Expiry: warnings 30, 7 and 1 day(s) ahead; at notAfter, UNHEALTHY (unless a renewed
    # file was swapped in first).
    {"trigger": "certificate_check_due", "source": [*UP, UNHEALTHY], "dest": None,
     "after": "check_certificate"},
    {"trigger": "certificate_expired", "source": UP, "dest": UNHEALTHY,
     "conditions": "certificate_expired_now"},
    # Clients (clients.py), counted from the first HEALTHY on, every few seconds; a
    # change is news only for status.json, /metrics and the idle stop.
    {"trigger": "clients_check_due", "source": [*UP, UNHEALTHY], "dest": None,
     "after": "count_clients"},
    {"trigger": "clients_changed", "source": IDLE, "dest": HEALTHY,
     "conditions": "has_clients", "before": "note_client_back"},
    {"trigger": "clients_changed", "source": [*UP, UNHEALTHY], "dest": None,
     "after": "note_clients"},
    # --stop-when-idle: nobody connected for a while (the whole timeout less a minute,
    # or half of a timeout of 2 minutes or less): IDLE, with a warning; a client that
    # connects makes it HEALTHY again.  Nobody for the whole timeout: stop, exit 0, the
    # home kept, so an orchestrator or a script can scale unused desktops to zero.
    # Each verdict holds only while nobody connected since it was due.  A warning due
    # while RECOVERING or RELOADING_TLS comes on the next HEALTHY (on_enter_HEALTHY);
    # the stop comes in any state a user could come back to.
    # At the stop, a connection too young to count yet (a person who just came, or a
    # health check) is looked at again once it could count: the stop waits that long.
    {"trigger": "idle_soon", "source": HEALTHY, "dest": IDLE, "conditions": "nobody_connected"},
    {"trigger": "idle_timed_out", "source": [*SERVING, RECOVERING, RELOADING_TLS, UNHEALTHY],
     "dest": None, "conditions": ["nobody_connected", "someone_connecting"],
     "after": "look_again"},
    {"trigger": "idle_timed_out", "source": [*SERVING, RECOVERING, RELOADING_TLS],
     "dest": STOPPING, "conditions": "nobody_connected"},
    {"trigger": "idle_timed_out", "source": UNHEALTHY, "dest": STOPPING,
     "conditions": "nobody_connected", "unless": "exit_on_failure"},
    # Bad flags, environment or a provisioning step that cannot succeed.
    {"trigger": "fail", "source": [INIT, STARTING], "dest": FAILED},
    # docker stop, Ctrl-C: stop the children in reverse order, then exit 0.
    {"trigger": "stop", "source": [INIT, *LIVE, UNHEALTHY], "dest": STOPPING},
    # Entering STOPPING, FAILED or (by default) UNHEALTHY posts shut_down, so the new
    # status word is written before the children are stopped, not after.
    {"trigger": "shut_down", "source": STOPPING, "dest": STOPPED,
     "before": "stop_children", "after": "exit"},
    {"trigger": "shut_down", "source": [FAILED, UNHEALTHY], "dest": None,
     "after": ["stop_children", "exit"]},
]

# Exit codes of the daemon (and so of the container) in each final state.
EXIT_CODES = {STOPPED: 0, FAILED: 2, UNHEALTHY: 3}


def machine_kwargs() -> dict[str, Any]:
    return {
        "states": STATES,
        "transitions": TRANSITIONS,
        "initial": INIT,
        "auto_transitions": False,
        "send_event": True,
    }


def build(model: Any) -> Machine:
    """The runtime machine.  Callbacks never fire triggers (they post events), so the
    machine needs neither locks nor a queue of its own."""
    machine = Machine(
        model=model,
        before_state_change="note_reason",
        after_state_change="on_transition_done",
        **machine_kwargs(),
    )
    # Every state's first on_enter: the new word is in the status file before the
    # transition's work (restarting websockify, stopping children) begins.
    for state in machine.states.values():
        state.on_enter.insert(0, "on_state_change")
    return machine
