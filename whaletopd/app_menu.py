"""/Apps in the menu: mapped before the session starts, and again on every change the
watcher reports (apps_changed), each change one log line."""

from __future__ import annotations

from typing import Any

from transitions import EventData

from whaletopd.events import AppsChanged
from whaletopd.model import DesktopBase, log


class AppsMixin(DesktopBase):
    def _start_apps(self) -> dict[str, Any]:
        from whaletopd import apps

        self._apps = apps.AppMapper(self.paths.apps_root, self.paths.applications_dir,
                                    self.paths.apps_manifest)
        # Watch first: a file written during the first sync still causes a second one.
        self._apps_watcher = apps.AppsWatcher(self.paths.apps_root,
                                              lambda: self.events.post(AppsChanged()))
        self._apps_watcher.start()
        changes = self._sync_apps()
        return {"mapped": len(self._apps.mapped()), "changes": changes}

    def map_apps(self, event: EventData) -> None:
        with self._step("map_apps") as out:
            out["changes"] = self._sync_apps()

    def _sync_apps(self) -> int:
        if self._apps is None:
            return 0
        try:
            changes = self._apps.sync()
        except OSError as exc:  # the manifest cannot be written: never fatal
            log.error("apps_sync_failed", reason=str(exc))
            return 0
        for change in changes:
            fields = {"name": change.name, "source": change.source}
            if change.kind == "skipped":
                log.warning("app_skipped", reason=change.reason, **fields)
            else:
                log.info(f"app_{change.kind}", **fields,
                         **({"reason": change.reason} if change.reason else {}))
        return len(changes)
