"""The machine's model: what each transition does, put together from one mixin per
concern.  Callback names in machine.TRANSITIONS are methods of Desktop:

    lifecycle.py     provision, launch_display, launch_session, start_probes,
                     on_enter_*, stop_children, exit
    recovery.py      restartable, retryable, stale, recover, retry_later, restart_child
    tls_rotation.py  new_certificate_valid, reload_certificate, defer_certificate,
                     check_certificate, certificate_expired_now, expiry_is_the_problem
    app_menu.py      map_apps
    model.py         note_reason, on_state_change (every transition), shared state
"""

from __future__ import annotations

from whaletopd.lifecycle import LifecycleMixin
from whaletopd.recovery import RecoveryMixin


class Desktop(LifecycleMixin, RecoveryMixin):
    """The desktop whose lifecycle the machine in machine.py runs."""
