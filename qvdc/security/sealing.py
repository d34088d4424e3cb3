"""Sealing: pool secrets encrypted at rest, so a plain ``etcdctl get`` shows no secret.

A sealed value is one string, stored in the secret's own field:
``qvdc-sealed:v1:<key id>:<base64url(nonce || ciphertext || tag)>``. The cipher is
AES-256-GCM with a random 96-bit nonce; the associated data is the pool id and the field
path, so a sealed value copied into another pool or field does not open. The key id in
the envelope names the key that sealed it, which is what makes rotation work: the
:class:`Keyring` seals with its *current* key and opens with the current key or any
*older* one it was given (docs/security.md, "Secrets").

A key file holds the base64 of 32 random bytes (``qvdcctl secrets new-key FILE``, or
``head -c 32 /dev/urandom | base64``); its id is derived from the key (a SHA-256 prefix),
so two different keys never share an id and nothing else needs naming. Errors name the
file and the reason, never key material or a plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

PREFIX = "qvdc-sealed:v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12


class SealError(ValueError):
    """A value cannot be sealed or opened (no key, unknown key id, tampered, bad key file)."""


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    secret: bytes = field(repr=False)


def key_id(secret: bytes) -> str:
    return hashlib.sha256(b"qvdc-secrets-key\x00" + secret).hexdigest()[:16]


def key_from_text(text: str, *, source: str) -> Key:
    """A key from its file's text: the base64 of exactly 32 bytes."""
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{source}: not base64 (expected the base64 of 32 random bytes)") from None
    if len(secret) != KEY_BYTES:
        raise SealError(f"{source}: holds {len(secret)} bytes, expected {KEY_BYTES}")
    return Key(id=key_id(secret), secret=secret)


def load_key(path: Path) -> Key:
    """The key in ``path``; warns when the file is readable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SealError(f"{path}: cannot read the secrets key: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secrets key %s is readable by others (mode %o): chmod 600 it", path, mode)
    return key_from_text(text, source=str(path))


def new_key_text() -> str:
    """A fresh key file's content."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n"


def write_new_key(path: Path) -> Key:
    """Create ``path`` (mode 600, never overwriting) with a fresh key."""
    text = new_key_text()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text)
    return key_from_text(text, source=str(path))


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def sealed_with(value: str) -> str:
    """The key id of a sealed value ("" when ``value`` is not sealed)."""
    if not is_sealed(value):
        return ""
    return value[len(PREFIX) :].partition(":")[0]


class Keyring:
    """The current key (seals and opens) and older ones (open only)."""

    def __init__(self, *, current: Key | None = None, older: Sequence[Key] = ()) -> None:
        self.current = current
        self._keys = {k.id: k for k in older}
        if current is not None:
            self._keys[current.id] = current

    @classmethod
    def from_files(
        cls, *, key_file: Path | None, old_key_files: Sequence[str | Path] = ()
    ) -> Keyring:
        return cls(
            current=load_key(key_file) if key_file is not None else None,
            older=[load_key(Path(p)) for p in old_key_files],
        )

    @property
    def can_seal(self) -> bool:
        return self.current is not None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def is_current(self, value: str) -> bool:
        return self.current is not None and sealed_with(value) == self.current.id

    def seal(self, plaintext: str, *, context: str) -> str:
        """``plaintext`` sealed with the current key, bound to ``context`` (pool id and
        field path). SealError without a current key."""
        if self.current is None:
            raise SealError("no secrets key is configured")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self.current.secret).encrypt(nonce, plaintext.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}{self.current.id}:{body}"

    def unseal(self, value: str, *, context: str) -> str:
        """The plaintext of a sealed ``value``; SealError naming the key id when no key
        here opens it (unknown id, another pool's value, tampered)."""
        if not is_sealed(value):
            raise SealError("not a sealed value")
        kid, sep, body = value[len(PREFIX) :].partition(":")
        key = self._keys.get(kid)
        if not sep or key is None:
            raise SealError(
                f"sealed with key {kid[:16]!r}, which is not configured (secrets.key_file / "
                "secrets.old_key_files)"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(raw) < _NONCE_BYTES + 16:
                raise ValueError("too short")
            plain = AESGCM(key.secret).decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()
            )
            return plain.decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SealError(
                f"sealed with key {kid!r} but does not open: altered, or sealed for another "
                "pool or field"
            ) from None
