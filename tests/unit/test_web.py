"""The web front's TLS with real certificate files: validation, the files nginx and
users read, the watch on the certificate's folder, rotation, and expiry on a made-up
clock (the `now` seam for dates, a fake monotonic clock for the deadline)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from whaletopd import certs, tls, watch
from whaletopd.certs import SERVED_PEM
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.events import (
    CertificateChanged,
    CertificateCheckDue,
    CertificateExpired,
    EventQueue,
)
from whaletopd.paths import Paths
from whaletopd.web import CHECK, MAX_CHECK_DELAY, WebFront

from .helpers import WAIT, FakeClock

DAY = timedelta(days=1)
# How much later than a threshold the check deadline is armed (so it is surely crossed).
MARGIN = 0.01


@dataclass
class Now:
    """The web front's idea of the date; starts at the real one (the certificates must
    load, and tls.load checks their dates against the real clock)."""

    at: datetime

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def now() -> Now:
    return Now(datetime.now(UTC))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
def deadlines(clock: FakeClock) -> Deadlines:
    return Deadlines(clock)


@pytest.fixture
def q() -> EventQueue:
    return EventQueue()


@pytest.fixture
def tls_paths(paths: Paths) -> Paths:
    paths.run_dir.mkdir()  # provisioning makes it before install()
    return paths


def _bundle(days: int = 40) -> tls.Bundle:
    return tls.generate_self_signed("desk.example", days=days)


def _put(path: Path, data: bytes) -> None:
    """Replace the file as a user or a cert manager does: a new file renamed over it."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def cert_file(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    folder.mkdir()
    return folder / "web.pem"


Make = Callable[..., WebFront]


@pytest.fixture
def make(tls_paths: Paths, q: EventQueue, deadlines: Deadlines,
         now: Now) -> Iterator[Make]:
    fronts: list[WebFront] = []

    def make(config: Config, **kwargs: Any) -> WebFront:
        front = WebFront(config, tls_paths, q, deadlines, now=now, **kwargs)
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        # stop(), or a failure if it hangs (rather than a hung test run).
        stopper = threading.Thread(target=front.stop, name="test-stop", daemon=True)
        stopper.start()
        stopper.join(WAIT)
        if stopper.is_alive():
            pytest.fail("WebFront.stop() hung")


def _installed(make: Make, cert_file: Path,
               bundle: tls.Bundle | None = None) -> tuple[WebFront, tls.Bundle]:
    bundle = bundle or _bundle()
    _put(cert_file, bundle.combined_pem())
    front = make(Config(tls_certificate=str(cert_file)))
    front.validate()
    front.install()
    return front, bundle


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _events(q: EventQueue) -> list[object]:
    out = []
    while (event := q.get(timeout=0)) is not None:
        out.append(event)
    return out


# -- without TLS ---------------------------------------------------------------------------

def test_without_tls_nothing_happens(make: Make, tls_paths: Paths,
                                     deadlines: Deadlines, q: EventQueue) -> None:
    front = make(Config())
    front.validate()
    front.install()
    front.check_expiry()
    assert front.describe() is None
    assert front.pin is None
    assert front.pem is None
    assert not front.candidate_valid()
    assert not front.expired_now()
    assert os.listdir(tls_paths.state_dir) == []
    assert os.listdir(tls_paths.run_dir) == []
    assert deadlines.names() == []
    assert _events(q) == []


# -- a user's file -------------------------------------------------------------------------

def test_validate_a_good_file(make: Make, cert_file: Path) -> None:
    bundle = _bundle()
    _put(cert_file, bundle.combined_pem())
    front = make(Config(tls_certificate=str(cert_file)))
    with capture_logs() as logs:
        front.validate()
    assert front.pin == bundle.fingerprint
    described = front.describe()
    assert described is not None
    assert described["fingerprint_sha256"] == bundle.fingerprint
    assert described["source"] == str(cert_file)
    assert "desk.example" in described["names"]
    assert described["not_after"] == bundle.not_after.isoformat().replace("+00:00", "Z")
    step = [e for e in logs if e["event"] == "step"]
    assert [(e["step"], e["fingerprint_sha256"]) for e in step] == [
        ("tls_validate", bundle.fingerprint)]
    assert front.pem is None, "validate() alone wrote nginx's file"


def test_validate_a_bad_file_raises(make: Make, cert_file: Path) -> None:
    cert_file.write_text("not a certificate\n")
    front = make(Config(tls_certificate=str(cert_file)))
    with pytest.raises(tls.TLSError, match=r"web\.pem"):
        front.validate()
    assert front.pin is None
    assert front.describe() is None


def test_install_writes_both_files_and_arms_the_check(make: Make, cert_file: Path, tls_paths: Paths,
                                                      deadlines: Deadlines) -> None:
    front, bundle = _installed(make, cert_file)
    public = tls_paths.state_dir / tls.PUBLIC_CERT_NAME
    assert public.read_bytes() == bundle.cert_pem()
    assert b"PRIVATE KEY" not in public.read_bytes()
    assert _mode(public) == 0o644
    # The key: on the tmpfs, in a private folder, for nginx's master (whaletopd's own
    # user), never the desktop user's.
    assert front.pem == tls_paths.tmpfs_dir / "whaletop-tls" / SERVED_PEM == tls_paths.tls_pem
    assert front.pem.read_bytes() == bundle.combined_pem()
    assert _mode(front.pem) == 0o600
    assert _mode(front.pem.parent) == 0o700
    assert front.pem.parent.stat().st_uid == os.geteuid()
    assert os.listdir(tls_paths.run_dir) == [], "a key was written outside the tmpfs"
    st = front.pem.stat()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    # 40 days left: the first threshold is 10 days away, so the check is an hour away.
    assert deadlines.names() == [CHECK]
    assert deadlines.timeout() == pytest.approx(MAX_CHECK_DELAY + MARGIN)


def test_a_change_in_the_certificate_folder_posts_certificate_changed(
        make: Make, cert_file: Path, q: EventQueue) -> None:
    _installed(make, cert_file)
    _put(cert_file, _bundle().combined_pem())
    assert q.get(timeout=WAIT) == CertificateChanged()


def test_stop_ends_the_watch(make: Make, cert_file: Path) -> None:
    before = set(threading.enumerate())
    front, _ = _installed(make, cert_file)
    assert set(threading.enumerate()) - before, "no watcher thread was started"
    front.stop()
    assert set(threading.enumerate()) - before == set(), "a watcher thread is still running"


def test_a_self_signed_certificate_is_written_and_not_watched(
        make: Make, tls_paths: Paths, deadlines: Deadlines,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_watcher(*args: object, **kwargs: object) -> None:
        raise AssertionError("a self-signed certificate has no file of the user's to watch")

    monkeypatch.setattr(watch, "Watcher", no_watcher)
    front = make(Config(enable_tls=True))
    front.validate()
    described = front.describe()
    assert described is not None
    assert "localhost" in described["names"]
    front.install()
    described = front.describe()
    assert described is not None
    assert described["source"] == "self-signed"
    kept = tls.load(tls_paths.state_dir / tls.SELF_SIGNED_NAME)
    assert front.pin == kept.fingerprint
    public = tls_paths.state_dir / tls.PUBLIC_CERT_NAME
    assert public.read_bytes() == kept.cert_pem()
    assert _mode(public) == 0o644
    assert front.pem is not None
    assert front.pem.read_bytes() == kept.combined_pem()
    assert deadlines.names() == [CHECK]
    assert not front.candidate_valid(), "a self-signed certificate has no candidate"


# -- rotation ------------------------------------------------------------------------------

def test_an_unchanged_file_is_no_candidate(make: Make, cert_file: Path) -> None:
    front, bundle = _installed(make, cert_file)
    with capture_logs() as logs:
        os.utime(cert_file)  # touched
        assert not front.candidate_valid()
        _put(cert_file, bundle.combined_pem())  # the same bytes, a new file
        assert not front.candidate_valid()
    assert logs == []


def test_a_new_valid_file_is_a_candidate_put_in_service(make: Make, cert_file: Path,
                                                        tls_paths: Paths,
                                                        deadlines: Deadlines) -> None:
    front, old = _installed(make, cert_file)
    new = _bundle(days=3)
    _put(cert_file, new.combined_pem())
    assert front.candidate_valid()
    assert front.pin == old.fingerprint, "the candidate was served before it was put in service"
    assert front.pem is not None
    assert front.pem.read_bytes() == old.combined_pem()
    with capture_logs() as logs:
        front.put_candidate_in_service()
    assert front.pin == new.fingerprint
    described = front.describe()
    assert described is not None
    assert described["fingerprint_sha256"] == new.fingerprint
    assert front.pem.read_bytes() == new.combined_pem()
    assert _mode(front.pem) == 0o600
    assert (tls_paths.state_dir / tls.PUBLIC_CERT_NAME).read_bytes() == new.cert_pem()
    reload = [e for e in logs if e["event"] == "step"]
    assert [(e["step"], e["replaced"], e["fingerprint_sha256"]) for e in reload] == [
        ("reload_tls", old.fingerprint, new.fingerprint)]
    # Its expiry is checked at once: 3 days left is within 30 and 7.
    warned = [e["within_days"] for e in logs if e["event"] == "certificate_expires_soon"]
    assert warned == [30, 7]
    assert deadlines.armed(CHECK)
    # The file it came from is now the one in service: touching it is no news.
    os.utime(cert_file)
    assert not front.candidate_valid()


def test_a_candidate_that_cannot_be_installed_leaves_the_old_one_in_service(
        make: Make, cert_file: Path, tls_paths: Paths) -> None:
    """The files are written first: when that fails, what is served and what the probes
    pin stay the old certificate, and the daemon goes on."""
    front, old = _installed(make, cert_file)
    _put(cert_file, _bundle(days=90).combined_pem())
    assert front.candidate_valid()
    served = tls_paths.tls_pem
    shutil.rmtree(served.parent)
    served.parent.write_bytes(b"")  # not a folder any more: the write fails
    with capture_logs() as logs:
        assert not front.put_candidate_in_service()
    assert front.pin == old.fingerprint
    refused = [e for e in logs if e["event"] == "certificate_refused"]
    assert [e["in_service"] for e in refused] == [old.fingerprint]
    assert "cannot install it" in refused[0]["reason"]
    assert front.pem == served


def test_a_bad_file_is_refused_once_and_the_old_one_stays(make: Make, cert_file: Path) -> None:
    front, old = _installed(make, cert_file)
    _put(cert_file, b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    with capture_logs() as logs:
        assert not front.candidate_valid()
        assert not front.candidate_valid()  # the same bad file again: not news
    refused = [e for e in logs if e["event"] == "certificate_refused"]
    assert len(refused) == 1, "refused more than once"
    assert refused[0]["in_service"] == old.fingerprint
    assert str(cert_file) in refused[0]["reason"]
    assert refused[0]["log_level"] == "error"
    assert front.pin == old.fingerprint
    assert front.pem is not None
    assert front.pem.read_bytes() == old.combined_pem()
    # A good file after the bad one is a candidate again.
    _put(cert_file, _bundle().combined_pem())
    assert front.candidate_valid()


def test_a_deleted_file_is_refused(make: Make, cert_file: Path) -> None:
    front, old = _installed(make, cert_file)
    cert_file.unlink()
    with capture_logs() as logs:
        assert not front.candidate_valid()
    assert [e["event"] for e in logs] == ["certificate_refused"]
    assert front.pin == old.fingerprint


def test_put_in_service_needs_a_candidate(make: Make, cert_file: Path) -> None:
    front, _ = _installed(make, cert_file)
    with pytest.raises(AssertionError, match="candidate_valid"):
        front.put_candidate_in_service()


def test_defer_and_take_deferred(make: Make) -> None:
    front = make(Config(enable_tls=True))
    assert not front.take_deferred()
    front.defer()
    front.defer()
    assert front.take_deferred()
    assert not front.take_deferred(), "a deferred change was applied twice"


# -- expiry --------------------------------------------------------------------------------

def _warnings(logs: list[dict[str, object]]) -> list[object]:
    return [e["within_days"] for e in logs if e["event"] == "certificate_expires_soon"]


def test_expiry_warnings_come_once_each(make: Make, cert_file: Path,
                                        now: Now, deadlines: Deadlines) -> None:
    with capture_logs() as logs:
        front, bundle = _installed(make, cert_file)
    assert _warnings(logs) == []
    end = bundle.not_after
    for at, expected in ((end - 30 * DAY, [30]), (end - 29 * DAY, []),
                         (end - 7 * DAY + timedelta(seconds=1), [7]), (end - 6 * DAY, []),
                         (end - DAY, [1]), (end - timedelta(hours=1), [])):
        now.at = at
        with capture_logs() as logs:
            front.check_expiry()
            front.check_expiry()
        assert _warnings(logs) == expected, at
        assert deadlines.armed(CHECK)
    now.at = end - 30 * DAY
    with capture_logs() as logs:
        front.check_expiry()
    assert _warnings(logs) == [], "warned again after the clock went back"


def test_a_warning_names_the_certificate(make: Make, cert_file: Path,
                                         now: Now) -> None:
    front, bundle = _installed(make, cert_file)
    now.at = bundle.not_after - 7 * DAY
    with capture_logs() as logs:
        front.check_expiry()
    assert [(e["within_days"], e["fingerprint_sha256"], e["not_after"], e["log_level"])
            for e in logs] == [
        (30, bundle.fingerprint, bundle.not_after.isoformat().replace("+00:00", "Z"),
         "warning"),
        (7, bundle.fingerprint, bundle.not_after.isoformat().replace("+00:00", "Z"),
         "warning")]


def test_the_check_deadline_is_the_next_threshold(make: Make, cert_file: Path, now: Now,
                                                  deadlines: Deadlines) -> None:
    front, bundle = _installed(make, cert_file)
    now.at = bundle.not_after - 7 * DAY - timedelta(seconds=100)
    front.check_expiry()
    assert deadlines.timeout() == pytest.approx(100 + MARGIN)
    now.at = bundle.not_after - timedelta(seconds=20)  # past every threshold: expiry next
    front.check_expiry()
    assert deadlines.timeout() == pytest.approx(20 + MARGIN)


def test_the_check_deadline_posts_certificate_check_due(make: Make, cert_file: Path,
                                                        clock: FakeClock,
                                                        deadlines: Deadlines) -> None:
    _installed(make, cert_file)
    assert deadlines.pop_due() is None
    timeout = deadlines.timeout()
    assert timeout is not None
    clock.t += timeout
    assert deadlines.pop_due() == CertificateCheckDue()


def test_expiry_posts_certificate_expired_and_cancels_the_check(
        make: Make, cert_file: Path, now: Now, deadlines: Deadlines,
        q: EventQueue) -> None:
    front, bundle = _installed(make, cert_file)
    assert deadlines.armed(CHECK)
    assert not front.expired_now()
    now.at = bundle.not_after - timedelta(seconds=1)
    assert not front.expired_now()
    now.at = bundle.not_after
    assert front.expired_now()
    with capture_logs() as logs:
        front.check_expiry()
    assert _events(q) == [CertificateExpired()]
    assert not deadlines.armed(CHECK), "a check is still armed for an expired certificate"
    assert _warnings(logs) == [30, 7, 1], "the warnings never logged come before expiry"


def test_check_expiry_without_a_certificate_does_nothing(make: Make, deadlines: Deadlines,
                                                         q: EventQueue) -> None:
    front = make(Config(enable_tls=True))  # validate() not called yet
    front.check_expiry()
    assert deadlines.names() == []
    assert _events(q) == []
    assert not front.expired_now()


def test_a_hostname_that_is_no_dns_name_is_no_crash(make: Make,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A container started with an odd --hostname: the self-signed certificate names
    localhost instead of crashing the daemon (a bare ValueError passes _guard)."""
    monkeypatch.setattr(certs.socket, "gethostname", lambda: "bad host!")
    front = make(Config(enable_tls=True))
    front.validate()
    described = front.describe()
    assert described is not None
    assert "localhost" in described["names"]


# -- bad files at rotation: refused, never a crash ----------------------------------------

def _duplicated_extension_pem() -> bytes:
    """A certificate whose subjectAltName comes twice (see test_tls), with its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from .test_tls import IAN_OID, SAN_OID, _resigned

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "desk.example")])
    at = datetime.now(UTC)
    two = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(at - DAY).not_valid_after(at + 90 * DAY)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("desk.example")]), False)
           .add_extension(x509.IssuerAlternativeName([x509.DNSName("desk.example")]), False)
           .sign(key, hashes.SHA256()))
    cert = _resigned(two, key, tbs=two.tbs_certificate_bytes.replace(IAN_OID, SAN_OID))
    return (cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def test_a_duplicated_extension_fails_validation_with_one_line(make: Make,
                                                               cert_file: Path) -> None:
    _put(cert_file, _duplicated_extension_pem())
    front = make(Config(tls_certificate=str(cert_file)))
    with pytest.raises(tls.TLSError, match="subjectAltName extension twice") as info:
        front.validate()
    assert "\n" not in str(info.value)
    assert front.pem is None


def test_a_duplicated_extension_at_rotation_is_refused_and_the_old_one_stays(
        make: Make, cert_file: Path) -> None:
    """Before, the new file was installed and describing it raised: the daemon died."""
    front, old = _installed(make, cert_file)
    _put(cert_file, _duplicated_extension_pem())
    with capture_logs() as logs:
        assert not front.candidate_valid()
    refused = [e for e in logs if e["event"] == "certificate_refused"]
    assert len(refused) == 1
    assert "subjectAltName extension twice" in refused[0]["reason"]
    assert front.pin == old.fingerprint
    assert front.pem is not None
    assert front.pem.read_bytes() == old.combined_pem()


def test_a_fifo_at_rotation_is_refused_without_blocking(make: Make, cert_file: Path) -> None:
    front, old = _installed(make, cert_file)
    fifo = cert_file.with_name("fifo")
    os.mkfifo(fifo)
    os.replace(fifo, cert_file)
    outcome: list[bool] = []
    with capture_logs() as logs:
        worker = threading.Thread(target=lambda: outcome.append(front.candidate_valid()),
                                  name="test-candidate", daemon=True)
        worker.start()
        worker.join(WAIT)
    assert not worker.is_alive(), "candidate_valid() blocked on a FIFO"
    assert outcome == [False]
    refused = [e for e in logs if e["event"] == "certificate_refused"]
    assert len(refused) == 1
    assert "is a FIFO (named pipe), not a regular file" in refused[0]["reason"]
    assert front.pin == old.fingerprint


# -- where nginx's key lives ---------------------------------------------------------------

def test_stop_removes_the_key_and_its_folder(make: Make, cert_file: Path,
                                             tls_paths: Paths) -> None:
    front, _ = _installed(make, cert_file)
    assert front.pem == tls_paths.tls_pem
    assert front.pem.exists()
    front.stop()
    assert not tls_paths.tls_pem.parent.exists()
    assert os.listdir(tls_paths.tmpfs_dir) == []
    assert os.listdir(tls_paths.run_dir) == []
    # What users trust stays: it holds no key.
    assert (tls_paths.state_dir / tls.PUBLIC_CERT_NAME).exists()


def test_a_rotation_writes_the_same_file(make: Make, cert_file: Path,
                                         tls_paths: Paths) -> None:
    front, _ = _installed(make, cert_file)
    new = _bundle(days=90)
    _put(cert_file, new.combined_pem())
    assert front.candidate_valid()
    assert front.put_candidate_in_service()
    assert front.pem == tls_paths.tls_pem
    assert tls_paths.tls_pem.read_bytes() == new.combined_pem()
    assert os.listdir(tls_paths.tls_pem.parent) == [SERVED_PEM]


def test_without_a_tmpfs_the_run_directory_is_used_and_cleaned(
        make: Make, cert_file: Path, tls_paths: Paths) -> None:
    """docker run --ipc=none has no /dev/shm."""
    tls_paths.tmpfs_dir.rmdir()
    front, bundle = _installed(make, cert_file)
    assert front.pem == tls_paths.run_dir / SERVED_PEM
    assert front.pem.read_bytes() == bundle.combined_pem()
    assert _mode(front.pem) == 0o600
    front.stop()
    assert os.listdir(tls_paths.run_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder away")
def test_a_folder_someone_else_made_first_is_not_used(make: Make, cert_file: Path,
                                                      tls_paths: Paths) -> None:
    """/dev/shm is writable by everyone: a folder of that name made by another user is
    left alone, and a new private one is made beside it."""
    taken = tls_paths.tls_pem.parent
    taken.mkdir(mode=0o777)
    os.chown(taken, 4321, 4321)
    front, _ = _installed(make, cert_file)
    assert front.pem is not None
    assert front.pem.parent != taken
    assert front.pem.parent.parent == tls_paths.tmpfs_dir
    assert _mode(front.pem.parent) == 0o700
    assert os.listdir(taken) == []
    front.stop()
    assert os.listdir(tls_paths.tmpfs_dir) == [taken.name]


def test_a_symlink_in_place_of_the_folder_is_not_followed(make: Make, cert_file: Path,
                                                          tls_paths: Paths,
                                                          tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tls_paths.tls_pem.parent.symlink_to(elsewhere)
    front, _ = _installed(make, cert_file)
    assert front.pem is not None
    assert front.pem.parent.parent == tls_paths.tmpfs_dir
    assert not front.pem.parent.is_symlink()
    assert os.listdir(elsewhere) == []


def test_an_own_folder_left_by_a_crash_is_used_and_made_private(
        make: Make, cert_file: Path, tls_paths: Paths) -> None:
    tls_paths.tls_pem.parent.mkdir(mode=0o755)
    tls_paths.tls_pem.parent.chmod(0o755)
    front, _ = _installed(make, cert_file)
    assert front.pem == tls_paths.tls_pem
    assert _mode(tls_paths.tls_pem.parent) == 0o700


# -- the self-signed certificate, renewed live ---------------------------------------------

def _self_signed(make: Make, **kwargs: object) -> WebFront:
    front = make(Config(enable_tls=True), **kwargs)
    front.validate()
    front.install()
    return front


def test_the_self_signed_certificate_is_renewed_live(make: Make, tls_paths: Paths, now: Now,
                                                     q: EventQueue,
                                                     deadlines: Deadlines) -> None:
    """A short-lived one (2 days, renewed 1 day before its end) on a made-up clock: the
    check is armed for the renewal, posts the same event as a rotated file, and the
    rotation validates the new one and puts it in service; no expiry warning (nobody
    has to do anything)."""
    with capture_logs() as logs:
        front = _self_signed(make, self_signed_days=2, renew_before=DAY)
    assert _warnings(logs) == []
    first = tls.load(tls_paths.state_dir / tls.SELF_SIGNED_NAME, now=now.at)
    assert front.pin == first.fingerprint
    renew_at = first.not_after - DAY
    now.at = renew_at - timedelta(seconds=100)
    front.check_expiry()
    assert deadlines.timeout() == pytest.approx(100 + MARGIN)
    assert _events(q) == []
    assert not front.candidate_valid(), "renewed before it was due"

    now.at = renew_at
    with capture_logs() as logs:
        front.check_expiry()
    assert _events(q) == [CertificateChanged()]
    assert logs == [], "renewal due is no news until it is done"
    assert deadlines.armed(CHECK)
    # The machine's rotation: candidate, then in service.
    assert front.candidate_valid()
    assert front.pin == first.fingerprint, "served before it was put in service"
    with capture_logs() as logs:
        assert front.put_candidate_in_service()
    renewed = tls.load(tls_paths.state_dir / tls.SELF_SIGNED_NAME, now=now.at)
    assert renewed.fingerprint != first.fingerprint
    assert renewed.not_after == now.at + 2 * DAY
    assert front.pin == renewed.fingerprint
    assert front.pem is not None
    assert front.pem.read_bytes() == renewed.combined_pem()
    assert (tls_paths.state_dir / tls.PUBLIC_CERT_NAME).read_bytes() == renewed.cert_pem()
    assert _mode(tls_paths.state_dir / tls.SELF_SIGNED_NAME) == 0o600
    steps = [e for e in logs if e["event"] == "step"]
    assert [(e["step"], e["replaced"], e["fingerprint_sha256"], e["source"], e["renewed"])
            for e in steps] == [("reload_tls", first.fingerprint, renewed.fingerprint,
                                 "self-signed", True)]
    assert [e for e in logs if e["event"] != "step"] == []
    # Renewed: nothing is due until the new one's own renewal, a day from now.
    front.check_expiry()
    assert _events(q) == []
    assert not front.candidate_valid()
    assert deadlines.timeout() == pytest.approx(MAX_CHECK_DELAY + MARGIN)


def test_a_renewal_due_is_posted_again_until_it_is_in_service(
        make: Make, now: Now, q: EventQueue) -> None:
    """A change while the desktop is starting or repairing is deferred; one that was
    dropped (UNHEALTHY for another reason) is asked for again at the next check."""
    front = _self_signed(make, self_signed_days=2, renew_before=DAY)
    now.at += timedelta(hours=25)
    front.check_expiry()
    front.check_expiry()
    assert _events(q) == [CertificateChanged(), CertificateChanged()]


def test_a_renewal_that_cannot_be_installed_falls_back_to_warnings(
        make: Make, tls_paths: Paths, now: Now, q: EventQueue) -> None:
    front = _self_signed(make, self_signed_days=2, renew_before=DAY)
    first = front.pin
    kept = tls_paths.state_dir / tls.SELF_SIGNED_NAME
    kept.unlink()
    kept.mkdir()  # the renewed one cannot be kept: a folder is in its place
    now.at += timedelta(hours=25)
    front.check_expiry()
    assert _events(q) == [CertificateChanged()]
    assert front.candidate_valid()
    with capture_logs() as logs:
        assert not front.put_candidate_in_service()
        front.check_expiry()
        front.check_expiry()
    assert front.pin == first
    refused = [e for e in logs if e["event"] == "certificate_refused"]
    assert len(refused) == 1
    assert "cannot install it" in refused[0]["reason"]
    # No more attempts (no line on every check); a person is told, once per threshold.
    assert _events(q) == []
    assert not front.candidate_valid()
    assert _warnings(logs) == [30, 7, 1]  # 23 hours left


def test_a_user_certificate_is_never_renewed(make: Make, cert_file: Path, now: Now,
                                             q: EventQueue) -> None:
    front, bundle = _installed(make, cert_file, _bundle(days=2))
    now.at = bundle.not_after - timedelta(hours=1)
    front.check_expiry()
    assert _events(q) == []
    assert not front.candidate_valid()
