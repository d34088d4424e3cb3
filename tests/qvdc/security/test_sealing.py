"""Sealing: AES-GCM envelopes naming their key, bound to pool and field, opened by the
current or an older key; key files read with errors that never show key material."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import pytest

from qvdc.security import sealing


def _key(tmp_path: Path, name: str) -> tuple[Path, sealing.Key]:
    path = tmp_path / name
    return path, sealing.write_new_key(path)


def test_seal_hides_the_plaintext_and_opens_in_its_context(tmp_path: Path) -> None:
    _, key = _key(tmp_path, "k")
    ring = sealing.Keyring(current=key)
    sealed = ring.seal("chap-secret-123", context="pool-a\x00f")
    assert sealed.startswith(f"qvdc-sealed:v1:{key.id}:")
    assert "chap-secret-123" not in sealed
    assert base64.b64encode(b"chap-secret-123").decode()[:12] not in sealed
    assert ring.unseal(sealed, context="pool-a\x00f") == "chap-secret-123"
    # A fresh nonce each time: the same secret never seals to the same text.
    assert ring.seal("chap-secret-123", context="pool-a\x00f") != sealed


def test_a_sealed_value_does_not_open_elsewhere_or_altered(tmp_path: Path) -> None:
    _, key = _key(tmp_path, "k")
    ring = sealing.Keyring(current=key)
    sealed = ring.seal("chap-secret-123", context="pool-a\x00f")
    with pytest.raises(sealing.SealError, match="another pool or field"):
        ring.unseal(sealed, context="pool-b\x00f")
    body = sealed[-8:]
    flipped = sealed[:-8] + ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(sealing.SealError, match="altered"):
        ring.unseal(flipped, context="pool-a\x00f")
    with pytest.raises(sealing.SealError):
        ring.unseal(sealed[: len(sealing.PREFIX) + 20], context="pool-a\x00f")


def test_rotation_old_key_opens_new_key_seals(tmp_path: Path) -> None:
    old_path, old = _key(tmp_path, "old")
    new_path, new = _key(tmp_path, "new")
    sealed_before = sealing.Keyring(current=old).seal("s3cret-s3cret", context="c")
    rotated = sealing.Keyring.from_files(key_file=new_path, old_key_files=[str(old_path)])
    assert rotated.unseal(sealed_before, context="c") == "s3cret-s3cret"
    assert not rotated.is_current(sealed_before)
    resealed = rotated.seal("s3cret-s3cret", context="c")
    assert rotated.is_current(resealed) and sealing.sealed_with(resealed) == new.id
    # Without the old key the old value is refused, naming the key id it needs.
    with pytest.raises(sealing.SealError, match=old.id):
        sealing.Keyring(current=new).unseal(sealed_before, context="c")


def test_no_current_key_cannot_seal() -> None:
    ring = sealing.Keyring()
    assert not ring.can_seal
    with pytest.raises(sealing.SealError, match="no secrets key"):
        ring.seal("x", context="c")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param("not base64 at all!", "not base64", id="not-base64"),
        pytest.param(base64.b64encode(b"short").decode(), "holds 5 bytes", id="short"),
    ],
)
def test_bad_key_files_are_refused_without_showing_them(
    tmp_path: Path, content: str, match: str
) -> None:
    path = tmp_path / "bad"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(sealing.SealError, match=match) as info:
        sealing.load_key(path)
    assert str(path) in str(info.value) and content not in str(info.value)


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(sealing.SealError, match="cannot read"):
        sealing.Keyring.from_files(key_file=tmp_path / "absent")


def test_new_key_is_private_never_overwrites_and_warns_when_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, key = _key(tmp_path, "k")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        sealing.write_new_key(path)
    assert sealing.load_key(path) == key  # the id is derived from the key: stable
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        sealing.load_key(path)
    assert "readable by others" in caplog.text
    assert path.read_text().strip() not in caplog.text
