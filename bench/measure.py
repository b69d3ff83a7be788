"""The measurements: each group of figures on its own containers, recorded into Results.

How each figure is measured is in bench/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench import cgroups, files, fleet, idle_cost, interactive, sound
from bench.browser import Browser, load_page, nginx_answers
from bench.containers import BenchError, Launcher, Running, docker
from bench.cpu import idle_figures
from bench.figures import GROUPS, SESSIONS
from bench.log import log
from bench.net import page_served, served_fingerprint
from bench.results import Results
from bench.timeline import (
    build_timeline,
    daemon_t0,
    parse_log,
    parse_time,
    step_durations,
    transition_time,
)

HERE = Path(__file__).resolve().parent
CERTGEN = HERE / "certgen.py"
KILL_XVNC = HERE / "in_container" / "kill_xvnc.py"
SNAPSHOT = HERE / "in_container" / "snapshot.py"
WATCH_APP = HERE / "in_container" / "watch_app.py"
VNC_SESSIONS = HERE / "in_container" / "vnc_sessions.py"
USER_HOME = "/home/user"

APP_ENTRY = """[Desktop Entry]
Type=Application
Name=Bench {tag}
Exec=/usr/bin/true
Icon=utilities-terminal
Categories=Utility;
"""


class Bench:
    def __init__(self, launcher: Launcher, runs: int, quick: bool,
                 browser: Browser | None = None) -> None:
        self.launcher = launcher
        self.container = launcher.container
        self.image = launcher.image
        self.web_port = launcher.web_port
        self.workdir = launcher.workdir
        self.runs = runs
        self.quick = quick
        self.results = Results()
        self.certs: dict[str, str] = {}  # file name in workdir/certs -> fingerprint
        self.browser = browser or Browser(None, "", "no browser was looked for")

    def settle(self, seconds: float) -> None:
        time.sleep(seconds / (3 if self.quick else 1))

    def record(self, key: str, value: float, note: str = "") -> None:
        self.results.record(key, value, note, busy=not self.launcher.quiet)

    # -- the figures ----------------------------------------------------------------------

    def fig_image(self) -> None:
        doc = json.loads(docker("image", "inspect", self.image).stdout)[0]
        self.record("image_size", doc["Size"] / 1e6)
        chromium = self.results.detail.get("chromium")
        self.results.notes["image_size"].append(
            "decimal MB as `docker images` prints"
            + ("" if chromium is None else f"; includes {chromium}" if chromium
               else "; NO chromium in this image"))

    def warm_up(self) -> None:
        """One untimed start (page cache, first-run effects), which also makes the
        certificates for the rotation runs with the image's own python3-cryptography."""
        pool = self.workdir / "certs"
        pool.mkdir(exist_ok=True)
        with self.container("warmup", volumes=[f"{pool}:/bench-certs"]) as c:
            c.wait_healthy()
            self.certs = json.loads(c.run_script(CERTGEN, "/bench-certs", str(2 * self.runs)))
            self.results.detail["chromium"] = docker(
                "exec", c.name, "sh", "-c",
                "command -v /usr/lib/chromium/chromium || command -v chromium || true",
            ).stdout.strip()
        log(f"warm-up done; {len(self.certs)} certificates made")

    def fig_start(self, i: int) -> None:
        res = self.results
        with self.container(f"start{i}") as c:
            t_seen = c.wait_healthy()
            healthy = t_seen - c.t_run
            if not page_served(self.web_port):
                raise BenchError("HEALTHY, but the noVNC page is not served")
            self.record("start_healthy", healthy)
            events = parse_log(c.logs())
            created = parse_time(c.inspect("{{.Created}}"))
            started = parse_time(c.inspect("{{.State.StartedAt}}"))
            tl = build_timeline(events, c.t_run, created, started, t_seen)
            res.timelines.append((healthy, tl))
            for name, ms in step_durations(events).items():
                res.steps.setdefault(name, []).append(ms)
            t0 = daemon_t0(events)
            healthy_ts = transition_time(events, "HEALTHY")
            if t0 is not None and healthy_ts is not None:
                for phase, value in (("docker run → container started", started - c.t_run),
                                     ("container started → whaletopd running", t0 - started),
                                     ("whaletopd running → HEALTHY", healthy_ts - t0),
                                     ("HEALTHY written → read by the runner",
                                      t_seen - healthy_ts)):
                    res.phases.setdefault(phase, []).append(value * 1000)
            log(f"start {i + 1}/{self.runs}: HEALTHY after {healthy:.3f} s")

            self.settle(2)
            old_since = c.detail()["since"]
            t0r = time.time()
            restart = subprocess.Popen(["docker", "restart", c.name], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)

            def again() -> bool:
                # the status file still says HEALTHY from before: a new `since` tells
                if c.word() != "HEALTHY":
                    return False
                doc = c.detail()
                return doc.get("state") == "HEALTHY" and doc.get("since") != old_since
            t_again = c.wait("HEALTHY after docker restart", again)
            _, restart_err = restart.communicate(timeout=60)
            if restart.returncode != 0:
                raise BenchError(f"docker restart failed: {restart_err[-300:]}")
            if not page_served(self.web_port):
                raise BenchError("HEALTHY after restart, but the noVNC page is not served")
            self.record("restart_healthy", t_again - t0r)
            log(f"restart {i + 1}/{self.runs}: HEALTHY again after {t_again - t0r:.3f} s")

            self.settle(2)
            t0s = time.perf_counter()
            docker("stop", c.name, timeout=60)
            took = time.perf_counter() - t0s
            code = int(c.inspect("{{.State.ExitCode}}"))
            word = c.word()
            self.record("stop", took)
            res.detail.setdefault("stop_exit_codes", []).append(code)
            res.require("stop", code == 0)
            log(f"stop {i + 1}/{self.runs}: {took:.3f} s, exit {code}, status {word}")

    def fig_http(self, i: int) -> None:
        with self.container(f"http{i}") as c:
            t = c.wait("noVNC page (HTTP 200)", lambda: page_served(self.web_port))
            self.record("start_http", t - c.t_run,
                        "GET /vnc.html, a static file nginx serves as soon as it runs; "
                        "the VNC login behind it is what HEALTHY proves")
            c.wait_healthy()
            log(f"http {i + 1}/{self.runs}: page served after {t - c.t_run:.3f} s")

    def fig_tls(self, i: int) -> None:
        with self.container(f"tls{i}", flags=["--enable-tls"]) as c:
            seen: dict[str, float] = {}

            def both() -> bool:
                if "healthy" not in seen and c.word() == "HEALTHY":
                    seen["healthy"] = time.time()
                if "page" not in seen and page_served(self.web_port, tls=True):
                    seen["page"] = time.time()
                return len(seen) == 2
            c.wait("HTTPS page and HEALTHY", both)
            c.proc.wait(timeout=30)
            self.record("start_https", seen["page"] - c.t_run)
            self.record("start_healthy_tls", seen["healthy"] - c.t_run)
            events = parse_log(c.logs())
            durations = step_durations(events)
            tls_steps = [ms for name, ms in durations.items() if name.startswith("tls")]
            if tls_steps:
                self.results.steps.setdefault("tls (with --enable-tls)", []).append(
                    sum(tls_steps))
            created = parse_time(c.inspect("{{.Created}}"))
            started = parse_time(c.inspect("{{.State.StartedAt}}"))
            self.results.tls_timelines.append((seen["healthy"] - c.t_run, build_timeline(
                events, c.t_run, created, started, seen["healthy"])))
            log(f"tls {i + 1}/{self.runs}: HTTPS page after {seen['page'] - c.t_run:.3f} s, "
                f"HEALTHY after {seen['healthy'] - c.t_run:.3f} s")

    def fig_browser(self, i: int) -> None:
        with self.container(f"browser{i}") as c:
            c.wait_healthy()
            self.settle(3)  # the LXDE session finishes starting
            profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=self.workdir))
            try:
                res = load_page(self.browser, self.web_port, profile)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                raise BenchError(str(exc)) from None
            finally:
                shutil.rmtree(profile, ignore_errors=True)
            if c.word() != "HEALTHY":
                raise BenchError(f"the desktop left HEALTHY while the page loaded: {c.word()}")
            events = parse_log(c.logs())
            for visit in ("cold", "warm"):
                res[visit]["nginx"] = nginx_answers(events, res[visit]["t_begin"],
                                                    res[visit]["t_end"])
            cold, warm = res["cold"], res["warm"]
            self.record("page_cold", cold["total_ms"] / 1000)
            self.record("page_warm", warm["total_ms"] / 1000)
            self.record("page_bytes", cold["transferred_bytes"] / 1000)
            self.results.detail.setdefault("browser", []).append(res)
            self.results.detail["chromium_host"] = self.browser.version
            log(f"browser {i + 1}/{self.runs}: loaded after {cold['total_ms']:.0f} ms "
                f"({cold['resources']} resources, {cold['transferred_bytes'] / 1000:.0f} kB), "
                f"again after {warm['total_ms']:.0f} ms (nginx: "
                f"{warm['nginx']['statuses']})")

    def fig_kill(self, i: int) -> None:
        with self.container(f"kill{i}") as c:
            c.wait_healthy()
            self.settle(2)
            waiter = subprocess.Popen(["docker", "wait", c.name], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            time.sleep(0.2)  # docker wait is attached before the kill
            out = c.run_script(KILL_XVNC, check=False)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not lines:
                raise BenchError(f"the kill script printed nothing: {out!r}")
            res = json.loads(lines[-1])
            waited, _ = waiter.communicate(timeout=60)
            t_wait = time.time()
            code = int(waited.strip())
            finished = parse_time(c.inspect("{{.State.FinishedAt}}"))
            left = res["t_left"] - res["t_kill"]
            exited = finished - res["t_kill"]
            self.record("kill_leaves_healthy", left)
            self.record("kill_exited", exited)
            self.results.detail.setdefault("kill", []).append({
                "left_s": round(left, 4), "new_status": res["word"], "exit_code": code,
                "exited_s (State.FinishedAt)": round(exited, 4),
                "docker wait returned_s": round(t_wait - res["t_kill"], 4),
                "final_status": c.word()})
            self.results.require("kill_exited", code != 0)
            log(f"kill {i + 1}/{self.runs}: left HEALTHY ({res['word']}) after {left:.4f} s, "
                f"exited {code} after {exited:.3f} s")

    def fig_idle(self, i: int) -> None:
        # Two of the HEALTHCHECK's 60 s intervals: the window holds as many of its execs
        # as a minute's share, wherever it starts.
        window = 10.0 if self.quick else 120.0
        with self.container(f"idle{i}") as c:
            c.wait_healthy()
            time.sleep(3 if self.quick else 15)  # the session finishes starting
            cid = c.inspect("{{.Id}}")
            before = json.loads(c.run_script(SNAPSHOT))
            procs0 = idle_cost.processes(cid)
            cpu0, h0, w0 = cgroups.cpu_seconds(cid), time.monotonic(), time.time()
            time.sleep(window)
            cpu1, h1, w1 = cgroups.cpu_seconds(cid), time.monotonic(), time.time()
            procs1 = idle_cost.processes(cid)
            after = json.loads(c.run_script(SNAPSHOT))
            mem = cgroups.memory(cid)
            if after["state"] != "HEALTHY" or before["since"] != after["since"]:
                raise BenchError(f"not HEALTHY throughout the idle window: {before} {after}")
            fig = idle_figures(before, after)
            container_cpu = (cpu1 - cpu0) / (h1 - h0) * 60
            self.record("idle_cpu", fig["cpu_s_per_min"])
            self.record("daemon_rss", after["mem"]["VmRSS"] / 1024)
            self.record("container_mem", mem["usage_minus_inactive_file"] / 2**20)
            self.record("container_cpu", container_cpu)
            self.results.detail.setdefault("idle", []).append({
                **fig, "container_cpu_s_per_min": round(container_cpu, 4),
                "per_process_cpu_s_per_min": idle_cost.breakdown(procs0, procs1, cpu1 - cpu0,
                                                                 h1 - h0),
                "healthchecks_in_window": idle_cost.healthchecks(c.name, w0, w1),
                "rss_kib": after["mem"],
                "cgroup_mib": {k: round(v / 2**20, 1) for k, v in mem.items()}})
            log(f"idle {i + 1}/{self.runs}: {fig['cpu_s_per_min']:.4f} CPU-s/min (schedstat "
                f"{fig['schedstat_cpu_s_per_min']:.4f}), RSS "
                f"{after['mem']['VmRSS'] / 1024:.1f} MiB, container "
                f"{mem['usage_minus_inactive_file'] / 2**20:.1f} MiB, "
                f"{container_cpu:.3f} CPU-s/min")

    def fig_idle_stop(self, i: int) -> None:
        """A desktop nobody connects to, with --stop-when-idle: what it costs until it
        stops itself, how late after its timeout it is gone, and what it costs after."""
        minutes = 0.1 if self.quick else 1.0
        timeout = minutes * 60
        with self.container(f"idlestop{i}", flags=(f"--stop-when-idle={minutes:g}",)) as c:
            t_healthy = c.wait_healthy()
            cid = c.inspect("{{.Id}}")
            # Once the session finished starting, and before the warning (IDLE comes
            # halfway for short timeouts): a desktop still HEALTHY that nobody uses.
            settle = 1.0 if self.quick else 15.0
            time.sleep(settle)
            window = timeout / 2 - settle - 1.0
            cpu0, h0 = cgroups.cpu_seconds(cid), time.monotonic()
            time.sleep(window)
            cpu1, h1 = cgroups.cpu_seconds(cid), time.monotonic()
            mem = cgroups.memory(cid)
            code = int(docker("wait", c.name, timeout=timeout + 60).stdout.strip())
            finished = parse_time(c.inspect("{{.State.FinishedAt}}"))
            try:
                after = cgroups.memory(cid)["usage_minus_inactive_file"] / 2**20
            except BenchError:
                after = 0.0  # the container's cgroup is gone with it
            words = [e.get("dest") for e in parse_log(c.logs())
                     if e.get("event") == "transition" and e.get("source") != e.get("dest")]
            self.record("unused_mem", mem["usage_minus_inactive_file"] / 2**20)
            self.record("unused_cpu", (cpu1 - cpu0) / (h1 - h0) * 60)
            self.record("idle_stop_late", finished - (t_healthy + timeout))
            self.record("unused_mem_after", after)
            self.results.require("idle_stop_late", code == 0 and words[-3:] == [
                "IDLE", "STOPPING", "STOPPED"])
            self.results.detail.setdefault("idle_stop", []).append({
                "timeout_s": timeout, "exit_code": code, "states": words,
                "cgroup_mib": {k: round(v / 2**20, 1) for k, v in mem.items()}})
            log(f"idle stop {i + 1}/{self.runs}: {mem['usage_minus_inactive_file'] / 2**20:.1f}"
                f" MiB, {(cpu1 - cpu0) / (h1 - h0) * 60:.3f} CPU-s/min, exited {code} "
                f"{finished - (t_healthy + timeout):.2f} s after its {timeout:g} s; "
                f"states {words}")

    def fig_apps(self, i: int) -> None:
        apps = Path(tempfile.mkdtemp(prefix="apps-", dir=self.workdir))
        try:
            with self.container(f"apps{i}", volumes=[f"{apps}:/Apps/Bench:ro"]) as c:
                c.wait_healthy()
                tag = uuid.uuid4().hex[:8]
                name = f"bench-{tag}.desktop"
                watcher = subprocess.Popen(c.script_argv(WATCH_APP, name),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
                assert watcher.stdout is not None
                first = watcher.stdout.readline()
                if first.strip() != "READY":
                    raise BenchError(f"menu watcher did not start: {first!r} "
                                     f"{watcher.stderr.read() if watcher.stderr else ''}")
                time.sleep(0.2)  # the watcher polls; the menu cache is settled
                tmp = apps / f".{name}.tmp"
                tmp.write_text(APP_ENTRY.format(tag=tag))
                t_write = time.time()
                os.replace(tmp, apps / name)
                out, _ = watcher.communicate(timeout=60)
                res = json.loads(out.strip().splitlines()[-1])
                if res["t_app"] is None or res["t_menu"] is None:
                    raise BenchError(f"the entry did not appear within 30 s: {res}")
                self.record("apps_copied", res["t_app"] - t_write)
                self.record("apps_menu", res["t_menu"] - t_write)
                log(f"apps {i + 1}/{self.runs}: copied after {res['t_app'] - t_write:.3f} s, "
                    f"in the menu cache after {res['t_menu'] - t_write:.3f} s")
        finally:
            shutil.rmtree(apps, ignore_errors=True)

    def fig_cert(self, i: int) -> None:
        if not self.certs:
            raise BenchError("no certificates (the warm-up makes them)")
        pool = self.workdir / "certs"
        first, second = f"cert{2 * i}.pem", f"cert{2 * i + 1}.pem"
        certs = Path(tempfile.mkdtemp(prefix="certs-", dir=self.workdir))
        try:
            shutil.copy2(pool / first, certs / "tls.pem")
            with self.container(f"cert{i}", flags=["--tls-certificate=/certs/tls.pem"],
                                volumes=[f"{certs}:/certs:ro"]) as c:
                c.wait_healthy()
                if served_fingerprint(self.web_port)[0] != self.certs[first]:
                    raise BenchError("HEALTHY but not serving the mounted certificate")
                # VNC sessions through nginx, kept open (and reading) across the rotation
                sessions = subprocess.Popen(
                    c.script_argv(VNC_SESSIONS, str(self.web_port), str(SESSIONS), "--tls",
                                  stdin=True),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
                try:
                    self.rotate(c, i, certs, second, sessions)
                finally:
                    if sessions.poll() is None:
                        sessions.kill()
                        sessions.communicate()
        finally:
            shutil.rmtree(certs, ignore_errors=True)

    def rotate(self, c: Running, i: int, certs: Path, second: str,
               sessions: subprocess.Popen[str]) -> None:
        """The certificate replaced under a HEALTHY desktop with VNC sessions open: when
        it is served, when HEALTHY again, and how many sessions it dropped."""
        assert sessions.stdin is not None
        assert sessions.stdout is not None
        ready = sessions.stdout.readline()
        if not ready.startswith("{"):
            err = sessions.stderr.read() if sessions.stderr else ""
            raise BenchError(f"the VNC sessions did not open: {ready!r} {err.strip()[-500:]}")
        opened = json.loads(ready)
        pool = self.workdir / "certs"
        self.settle(1)
        old_since = c.detail()["since"]
        tmp = certs / ".tls.pem.new"
        shutil.copy2(pool / second, tmp)
        t_write = time.time()
        os.replace(tmp, certs / "tls.pem")
        want = self.certs[second]
        deadline = time.monotonic() + 30
        t_served = None
        while time.monotonic() < deadline:
            served, at = served_fingerprint(self.web_port, timeout=1.0)
            if served == want:
                t_served = at
                break
            time.sleep(0.005)
        if t_served is None:
            raise BenchError("the new certificate was not served within 30 s")

        def again() -> bool:
            doc = c.detail()
            return doc.get("state") == "HEALTHY" and doc.get("since") != old_since
        t_healthy = c.wait("HEALTHY after the rotation", again)
        sessions.stdin.write("check\n")
        sessions.stdin.flush()
        out, err = sessions.communicate(timeout=60)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise BenchError(f"the VNC sessions said nothing after the rotation: "
                             f"{err.strip()[-500:]}")
        kept = json.loads(lines[-1])
        self.record("cert_served", t_served - t_write,
                    f"with {SESSIONS} VNC sessions open through nginx")
        self.record("cert_healthy", t_healthy - t_write)
        self.record("cert_dropped", kept["dropped"])
        self.results.require("cert_dropped", kept["dropped"] == 0)
        self.results.detail.setdefault("cert_sessions", []).append({
            **kept, "t_check_after_write_s": round(kept["t_check"] - t_write, 3),
            "nginx_workers_before": opened["nginx_workers"]})
        log(f"cert {i + 1}/{self.runs}: served after {t_served - t_write:.3f} s, "
            f"HEALTHY again after {t_healthy - t_write:.3f} s; VNC sessions kept "
            f"{kept['alive']} of {kept['opened']} (nginx workers: "
            f"{kept['nginx_workers']})")

    def make_home(self, files: int) -> Path:
        home = self.workdir / "home-big"
        t0 = time.monotonic()
        per_dir = 1000
        for n in range(files):
            d = home / "files" / f"d{n // per_dir:04d}"
            if n % per_dir == 0:
                d.mkdir(parents=True)
                os.chown(d, 1000, 1000)
            fd = os.open(d / f"f{n % per_dir:04d}.txt", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x\n")
            os.fchown(fd, 1000, 1000)
            os.close(fd)
        os.chown(home / "files", 1000, 1000)
        os.chown(home, 1000, 1000)
        os.sync()  # no write-back of 100,000 new inodes during the measured starts
        log(f"made a home with {files} files in {time.monotonic() - t0:.1f} s")
        return home

    @staticmethod
    def reset_home(home: Path, keep: str = "files") -> None:
        """Back to what it was before the run: the desktop adds /etc/skel and caches."""
        for entry in home.iterdir():
            if entry.name == keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def fig_home(self, files: int) -> None:
        big = self.make_home(files)
        empty = self.workdir / "home-empty"
        empty.mkdir()
        os.chown(empty, 1000, 1000)
        try:
            for i in range(self.runs):
                pair = {}
                order = (("empty", empty), ("big", big))
                for kind, home in order if i % 2 == 0 else order[::-1]:  # no drift bias
                    with self.container(f"home-{kind}{i}",
                                        volumes=[f"{home}:{USER_HOME}"]) as c:
                        pair[kind] = c.wait_healthy() - c.t_run
                        self.record(f"home_{kind}", pair[kind])
                    self.reset_home(home)
                    os.sync()
                self.record("home_ratio", pair["big"] / pair["empty"])
                log(f"home {i + 1}/{self.runs}: empty {pair['empty']:.3f} s, {files} files "
                    f"{pair['big']:.3f} s, ratio {pair['big'] / pair['empty']:.3f}")
        finally:
            shutil.rmtree(big, ignore_errors=True)
            shutil.rmtree(empty, ignore_errors=True)

    # -- running ------------------------------------------------------------------------

    def run_group(self, group: str, home_files: int) -> None:
        """One group's runs; an error ends the group and is kept for its figures."""
        per_run: dict[str, Callable[[int], None]] = {
            "start": self.fig_start, "http": self.fig_http, "tls": self.fig_tls,
            "kill": self.fig_kill, "apps": self.fig_apps, "cert": self.fig_cert,
            "idle": self.fig_idle, "browser": self.fig_browser,
            "idle_stop": self.fig_idle_stop, "interactive": lambda i: interactive.run(self, i),
            "files": lambda i: files.fig_files(self, i),
            "idle_tls": lambda i: idle_cost.fig_idle_tls(self, i),
            "sound": lambda i: sound.fig_sound(self, i)}
        if group == "browser" and self.browser.missing:
            log(f"browser: skipped: {self.browser.missing}")
            self.results.skip(GROUPS[group], self.browser.missing)
            return
        try:
            if group == "image":
                self.fig_image()
            elif group == "home":
                self.fig_home(home_files)
            elif group == "fleet":
                fleet.measure(self)
            else:
                for i in range(self.runs):
                    per_run[group](i)
        except (BenchError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            log(f"{group}: ERROR {exc}")
            self.results.fail(GROUPS[group], f"{type(exc).__name__}: {exc}")
        finally:
            self.launcher.cleanup()
