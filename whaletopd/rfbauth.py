"""VNC authentication's one computation: the server's challenge DES-encrypted with the
bit-reversed password.  Shared by the health checks (probes.py) and the relay
(vncrelay.py), which log in to Xvnc as a client does."""

from __future__ import annotations

import functools
from collections.abc import Callable

# The grant whaletopd's own checks carry to the relay: the sign-in service answers it for
# the probe token (through nginx), the checks send it themselves on the relay's socket.
PROBE_GRANT = "probe"
PROBE_RELAY_HEADERS = {"X-Whaletop-Grant": PROBE_GRANT, "X-Whaletop-Role": "full"}

def vnc_key(password: str) -> bytes:
    return bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))


@functools.cache
def libcrypto_des() -> tuple[Callable[..., object], Callable[..., object]] | None:
    """OpenSSL's DES_set_key_unchecked and DES_ecb_encrypt, through ctypes: libcrypto is
    in the daemon already (hashlib's), where cryptography's ciphers would cost it ~4 MiB
    for two 8-byte blocks per login.  None when this libcrypto lacks them."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcrypto.so.3")
        return lib.DES_set_key_unchecked, lib.DES_ecb_encrypt
    except (OSError, AttributeError):
        return None


def vnc_des_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: DES-encrypt the challenge with the bit-reversed password."""
    des = libcrypto_des()
    if des is not None:
        import ctypes

        set_key, ecb = des
        schedule = ctypes.create_string_buffer(128)  # DES_key_schedule: 16 x 8 bytes
        set_key(ctypes.create_string_buffer(vnc_key(password), 8), schedule)
        out = b""
        for i in range(0, len(challenge), 8):
            block = ctypes.create_string_buffer(challenge[i:i + 8], 8)
            result = ctypes.create_string_buffer(8)
            ecb(block, result, schedule, 1)  # DES_ENCRYPT
            out += result.raw
        return out
    return vnc_des_response_cryptography(password, challenge)


def vnc_des_response_cryptography(password: str, challenge: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:  # cryptography >= 43 keeps (3)DES in "decrepit"; older ones in algorithms
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - depends on the installed version
        from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[attr-defined,no-redef,unused-ignore]
            TripleDES,
        )
    key = vnc_key(password)
    # Three equal keys make TripleDES single DES, which is what VNC authentication uses.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()
