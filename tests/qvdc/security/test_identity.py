"""Reading callers: getpeercert()-shaped certificates and bearer tokens into identities."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from qvdc.security import identity
from qvdc.security.identity import Kind


def peer_cert(
    *, cn: str | None = None, o: list[str] | None = None, dns: list[str] | None = None
) -> dict[str, Any]:
    """What ssl.SSLObject.getpeercert() returns for a verified certificate."""
    subject: list[tuple[tuple[str, str], ...]] = []
    if cn is not None:
        subject.append((("commonName", cn),))
    for value in o or []:
        subject.append((("organizationName", value),))
    cert: dict[str, Any] = {
        "subject": tuple(subject),
        "issuer": ((("commonName", "dev CA"),),),
        "notAfter": "Jan  1 00:00:00 2030 GMT",
    }
    if dns is not None:
        cert["subjectAltName"] = tuple(("DNS", d) for d in dns)
    return cert


def test_node_certificate_is_named_by_its_san_dns_not_its_cn() -> None:
    who = identity.from_certificate(
        peer_cert(cn="something-else", o=["quantix:nodes"], dns=["host-a"])
    )
    assert (who.kind, who.name, who.via) == (Kind.NODE, "host-a", "certificate")
    assert who.describe() == "node host-a (certificate)"


@pytest.mark.parametrize(
    ("group", "role"), [("quantix:operators", "admin"), ("quantix:viewers", "viewer")]
)
def test_operator_certificate_has_the_role_of_its_group(group: str, role: str) -> None:
    who = identity.from_certificate(peer_cert(cn="alice", o=[group]))
    assert (who.kind, who.name, who.role) == (Kind.OPERATOR, "alice", role)


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        (None, "no client certificate"),
        ({}, "no client certificate"),
        (peer_cert(cn="x"), "0 subject O values"),
        (peer_cert(cn="x", o=["quantix:nodes", "quantix:operators"]), "2 subject O values"),
        (peer_cert(cn="x", o=["quantix:root"]), "names no role"),
        (peer_cert(cn="h", o=["quantix:nodes"]), "0 SAN DNS names"),
        (peer_cert(cn="h", o=["quantix:nodes"], dns=["a", "b"]), "2 SAN DNS names"),
        (peer_cert(o=["quantix:operators"]), "0 CNs"),
        # A node's SAN does not make a node of an operator-group certificate.
        (peer_cert(o=["quantix:viewers"], dns=["host-a"]), "0 CNs"),
    ],
)
def test_a_certificate_naming_nobody_is_anonymous_with_the_reason(
    cert: dict[str, Any] | None, reason: str
) -> None:
    who = identity.from_certificate(cert)
    assert who.kind is Kind.ANONYMOUS
    assert reason in who.reason


def test_bearer_parses_the_scheme_case_insensitively() -> None:
    assert identity.bearer(None) is None
    assert identity.bearer("Bearer abc") == "abc"
    assert identity.bearer("bearer   abc ") == "abc"
    with pytest.raises(ValueError, match="Bearer"):
        identity.bearer("Basic dXNlcjpwYXNz")
    with pytest.raises(ValueError, match="empty"):
        identity.bearer("Bearer ")


NOW = 1_800_000_000.0
BOOT = "boot-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
VIEW = "view-token-0123456789abcdef"


def tokens(*, expires: float = NOW + 3600) -> identity.Tokens:
    return identity.Tokens(
        bootstrap=[
            identity.BootstrapToken(
                id="rack-7",
                digest=identity.digest(BOOT),
                expires_at=expires,
                hostnames=frozenset({"host-a"}),
            )
        ],
        operators=[
            identity.OperatorToken(name="alice", role="admin", digest=identity.digest(ADMIN)),
            identity.OperatorToken(
                name="vic", role="viewer", digest=identity.digest(VIEW), expires_at=expires
            ),
        ],
    )


def test_tokens_resolve_to_their_identity() -> None:
    book = tokens()
    boot = book.resolve(BOOT, now=NOW)
    assert (boot.kind, boot.name, boot.hostnames) == (
        Kind.BOOTSTRAP,
        "rack-7",
        frozenset({"host-a"}),
    )
    admin = book.resolve(ADMIN, now=NOW)
    assert (admin.kind, admin.name, admin.role, admin.via) == (
        Kind.OPERATOR,
        "alice",
        "admin",
        "token",
    )
    assert book.resolve(VIEW, now=NOW).role == "viewer"


def test_unknown_and_expired_tokens_are_anonymous() -> None:
    book = tokens(expires=NOW)
    assert book.resolve(BOOT[:-1] + "X", now=NOW).reason == "unknown bearer token"
    assert book.resolve(BOOT + "X", now=NOW).reason == "unknown bearer token"
    expired = book.resolve(BOOT, now=NOW)
    assert expired.kind is Kind.ANONYMOUS and "rack-7 expired at" in expired.reason
    assert "vic expired" in book.resolve(VIEW, now=NOW).reason
    assert book.resolve(ADMIN, now=NOW + 10**9).kind is Kind.OPERATOR  # no expiry


def test_a_token_configured_twice_is_refused() -> None:
    entry = identity.OperatorToken(name="a", role="admin", digest=identity.digest(ADMIN))
    with pytest.raises(ValueError, match="twice"):
        identity.Tokens(operators=[entry, entry])


def test_token_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        f"""
[[bootstrap]]
id = "rack-7"
token = "{BOOT}"
expires = 2027-01-15T00:00:00Z
hostnames = ["host-a", "host-b"]

[[operator]]
name = "alice"
role = "admin"
token = "{ADMIN}"
"""
    )
    book = identity.load_tokens(path)
    expiry = datetime.datetime(2027, 1, 15, tzinfo=datetime.UTC).timestamp()
    assert book.bootstrap[0].expires_at == expiry
    assert book.resolve(BOOT, now=expiry - 1).kind is Kind.BOOTSTRAP
    assert book.resolve(BOOT, now=expiry).kind is Kind.ANONYMOUS
    assert book.resolve(ADMIN, now=expiry).name == "alice"
    assert BOOT not in repr(book.bootstrap) and ADMIN not in repr(book.operators)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[bootstrap]]\nid = "a"\ntoken = "' + BOOT + '"\n', r"bootstrap\[0\].expires: required"),
        (
            '[[bootstrap]]\nid = "a"\ntoken = "short"\nexpires = 2027-01-01T00:00:00Z\n',
            r"bootstrap\[0\].token: a string of at least 16",
        ),
        (
            '[[bootstrap]]\nid = "a"\ntoken = "' + BOOT + '"\nexpires = 2027-01-01T00:00:00\n',
            "time zone",
        ),
        ('[[operator]]\nname = "a"\nrole = "root"\ntoken = "' + ADMIN + '"\n', "role: one of"),
        ('[[operator]]\nname = "a"\nrole = "admin"\ntoken = "' + ADMIN + '"\nx = 1\n', "unknown"),
        ("[[users]]\n", "unknown keys"),
        ("not toml [", "token file"),
    ],
)
def test_token_file_mistakes_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        identity.load_tokens(path)
