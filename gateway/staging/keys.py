"""SSH keys of storage credentials: generated or uploaded, checked, encrypted at rest.

Private keys are sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the config's
``cookie_secret`` for this purpose only; the associated data binds each sealed key to its owner
and storage name, so a sealed key copied into another user's row does not open. Keys are never
logged, never on an argv, never in a job script: they reach the cluster only as 0600 files in
the job's own 0700 directory.
"""

from __future__ import annotations

import os

import asyncssh
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import FieldError, ValidationFailed

MAX_KEY_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
# The largest RSA key accepted: ssh-keygen's common choice. The key's size is read before
# anything else is done with it; the library's own check of a key (skipped, see
# check_private_key) would cost 0.28 s here at 4096 bits, 4.3 s at 8192.
MAX_RSA_BITS = 4096
_NOT_A_KEY = "not an SSH private key (OpenSSH or PEM format)"
_NONCE_BYTES = 12
_SEAL_VERSION = b"\x01"


class SealedKeyError(Exception):
    """A sealed key could not be opened (another secret, another row, or damaged)."""


def _cipher(secret: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"hpcgw storage private keys v1").derive(secret.encode())
    return AESGCM(key)


def seal(secret: str, private_key: bytes, *, owner: int, name: str) -> bytes:
    """``private_key`` encrypted for the row of ``owner``'s storage ``name``."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _cipher(secret).encrypt(nonce, private_key, f"{owner}/{name}".encode())
    return _SEAL_VERSION + nonce + sealed


def unseal(secret: str, sealed: bytes, *, owner: int, name: str) -> bytes:
    """The private key :func:`seal` sealed for exactly this row; :class:`SealedKeyError` else."""
    if not sealed.startswith(_SEAL_VERSION) or len(sealed) < 1 + _NONCE_BYTES + 16:
        raise SealedKeyError("not a sealed key")
    nonce, body = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:]
    try:
        return _cipher(secret).decrypt(nonce, body, f"{owner}/{name}".encode())
    except Exception as exc:  # cryptography's InvalidTag
        raise SealedKeyError("the sealed key does not open with this gateway's secret") from exc


def generate_key(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key: (the private key in OpenSSH format, the public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_private_key("openssh"), key.export_public_key("openssh").decode().strip()


def check_private_key(data: bytes, field: str = "private_key") -> tuple[bytes, str]:
    """An uploaded private key, re-exported in OpenSSH format, and its public key line.

    Refused (422 naming ``field``): too large, not a private key, protected by a passphrase
    (the gateway could not use it unattended), RSA outside :data:`MIN_RSA_BITS` to
    :data:`MAX_RSA_BITS` bits, or an RSA key whose numbers do not agree. The error never
    quotes the key. Costs well under a millisecond for any key this accepts or refuses: the
    key is parsed without the library's RSA validation (its primality tests hold the
    interpreter's lock: 0.28 s for 4096 bits, 4.3 s for 8192, a minute for a key of 16 KiB,
    in a thread as on the event loop) and :func:`_rsa_agrees` checks the rest.
    """
    if len(data) > MAX_KEY_BYTES:
        raise ValidationFailed([FieldError(field, f"over {MAX_KEY_BYTES} bytes")])
    try:
        key = asyncssh.import_private_key(data, unsafe_skip_rsa_key_validation=True)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError, TypeError) as exc:
        # asyncssh says "Passphrase must be specified ..." for an encrypted key.
        problem = ("the key is protected by a passphrase; upload a key without one"
                   if "passphrase" in str(exc).lower() else _NOT_A_KEY)
        raise ValidationFailed([FieldError(field, problem)]) from None
    if key.get_algorithm() == "ssh-rsa":
        _check_rsa(getattr(key, "pyca_key", None), field)
    return key.export_private_key("openssh"), key.export_public_key("openssh").decode().strip()


def _check_rsa(pyca: object, field: str) -> None:
    """422 naming ``field`` unless ``pyca`` (an imported RSA key, unvalidated) has
    :data:`MIN_RSA_BITS` to :data:`MAX_RSA_BITS` bits and numbers that agree."""
    if not isinstance(pyca, rsa.RSAPrivateKey):
        raise ValidationFailed([FieldError(field, _NOT_A_KEY)])
    if not MIN_RSA_BITS <= pyca.key_size <= MAX_RSA_BITS:
        raise ValidationFailed([FieldError(field, (
            f"RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits (this one has "
            f"{pyca.key_size}); ed25519 and ecdsa keys are accepted too"))])
    if not _rsa_agrees(pyca.private_numbers()):
        raise ValidationFailed([FieldError(field, _NOT_A_KEY)])


def _rsa_agrees(numbers: rsa.RSAPrivateNumbers) -> bool:
    """Whether an RSA key's numbers agree with each other (n = pq, ed = 1 mod p-1 and q-1,
    the CRT values), as OpenSSL's check has them: all of it but the primality of p and q,
    which concerns only the key's owner (a key of composite factors fails to sign for them,
    on the cluster) and is what made the check cost seconds. Microseconds at 4096 bits."""
    p, q, d = numbers.p, numbers.q, numbers.d
    e, n = numbers.public_numbers.e, numbers.public_numbers.n
    return (p > 2 and q > 2 and p * q == n and (e * d) % (p - 1) == 1
            and (e * d) % (q - 1) == 1 and numbers.dmp1 == d % (p - 1)
            and numbers.dmq1 == d % (q - 1) and (numbers.iqmp * q) % p == 1)
