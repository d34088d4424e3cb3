"""Who is calling: a peer certificate or a bearer token, read into an :class:`Identity`.

Pure functions of what the TLS layer and the request's metadata hand over, so every
face of the controller (gRPC, Connect/HTTP) reads callers the same way, and
:mod:`qvdc.api.auth` decides what each identity may do.

* A **certificate** (``ssl.SSLObject.getpeercert()``'s dict, already verified against
  the client CA by the handshake) names a node or an operator by the contract of
  :mod:`qvdc.security.certs`: subject O ``quantix:nodes`` and exactly one SAN DNS name,
  the hostname, is a node; O ``quantix:operators`` / ``quantix:viewers`` and exactly one
  CN is an operator with role ``admin`` / ``viewer``. Anything else (no O, two O's, an O
  naming no role, a node certificate with two DNS names) names nobody: the caller is
  anonymous, with the reason kept for the refusal message.
* A **bearer token** (``authorization: Bearer <token>``) is looked up in
  :class:`Tokens`: an operator token names an operator and role; a bootstrap token
  names only itself and lets a new node register once (docs/security.md, "Bootstrap").
  Tokens are kept as SHA-256 digests and compared with :func:`hmac.compare_digest`
  against every entry, so neither the comparison's time nor the entry's position says
  how much of a guess was right.

A valid certificate wins over a token sent with it. The token file (TOML, ``[[bootstrap]]``
and ``[[operator]]`` tables) is described in docs/security.md.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qvdc.security import certs

#: A token shorter than this is refused when the token file is read: guessable.
MIN_TOKEN_CHARS = 16


class Kind(enum.Enum):
    NODE = "node"
    OPERATOR = "operator"
    BOOTSTRAP = "bootstrap"
    ANONYMOUS = "anonymous"


ROLES = tuple(certs.ROLE_GROUPS)
"""Operator roles: ``admin`` may change everything, ``viewer`` may only read."""

_ROLE_OF_GROUP = {group: role for role, group in certs.ROLE_GROUPS.items()}


@dataclass(frozen=True, slots=True)
class Identity:
    """One caller. ``name`` is a node's hostname, an operator's name or a bootstrap
    token's id; ``role`` an operator's role; ``via`` what proved it (``certificate``,
    ``token``); ``reason`` why an anonymous caller's credential named nobody;
    ``hostnames`` the hosts a bootstrap token may register (empty: any)."""

    kind: Kind
    name: str = ""
    role: str = ""
    via: str = ""
    reason: str = ""
    hostnames: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_node(self) -> bool:
        return self.kind is Kind.NODE

    @property
    def is_operator(self) -> bool:
        return self.kind is Kind.OPERATOR

    def describe(self) -> str:
        """For log lines and refusal messages: ``node web-1 (certificate)``,
        ``operator alice (viewer, token)``, ``bootstrap token rack-7``, ``anonymous``."""
        if self.kind is Kind.NODE:
            return f"node {self.name} ({self.via})"
        if self.kind is Kind.OPERATOR:
            return f"operator {self.name} ({self.role}, {self.via})"
        if self.kind is Kind.BOOTSTRAP:
            return f"bootstrap token {self.name}"
        return f"anonymous ({self.reason})" if self.reason else "anonymous"


def anonymous(reason: str = "") -> Identity:
    return Identity(kind=Kind.ANONYMOUS, reason=reason)


def node(hostname: str, *, via: str = "certificate") -> Identity:
    return Identity(kind=Kind.NODE, name=hostname, via=via)


def operator(name: str, role: str, *, via: str = "certificate") -> Identity:
    if role not in ROLES:
        raise ValueError(f"role must be one of {list(ROLES)}: {role!r}")
    return Identity(kind=Kind.OPERATOR, name=name, role=role, via=via)


def _subject(cert: Mapping[str, Any], key: str) -> list[str]:
    values: list[str] = []
    for rdn in cert.get("subject") or ():
        for name, value in rdn:
            if name == key:
                values.append(str(value))
    return values


def from_certificate(cert: Mapping[str, Any] | None) -> Identity:
    """The identity a verified peer certificate names (module docstring). ``None`` or an
    empty dict (no certificate presented) is anonymous."""
    if not cert:
        return anonymous("no client certificate")
    groups = _subject(cert, "organizationName")
    if len(groups) != 1:
        return anonymous(f"certificate has {len(groups)} subject O values, not one")
    group = groups[0]
    if group == certs.NODE_GROUP:
        dns = [str(v) for k, v in cert.get("subjectAltName") or () if k == "DNS"]
        if len(dns) != 1 or not dns[0]:
            return anonymous(f"node certificate has {len(dns)} SAN DNS names, not one")
        return node(dns[0])
    role = _ROLE_OF_GROUP.get(group)
    if role is None:
        return anonymous(f"certificate group {group!r} names no role")
    names = _subject(cert, "commonName")
    if len(names) != 1 or not names[0]:
        return anonymous(f"operator certificate has {len(names)} CNs, not one")
    return operator(names[0], role)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value; None if there is no
    value; raises ``ValueError`` for another scheme or an empty token."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError("authorization must be 'Bearer <token>'")
    token = token.strip()
    if not token:
        raise ValueError("empty bearer token")
    return token


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class BootstrapToken:
    """Lets a node that has no certificate yet register a new hostname, until
    ``expires_at`` (Unix seconds). ``hostnames`` empty: any hostname."""

    id: str
    digest: bytes = field(repr=False)
    expires_at: float
    hostnames: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OperatorToken:
    """An operator's API token: ``name`` with ``role``, until ``expires_at`` (None:
    until removed from the file)."""

    name: str
    role: str
    digest: bytes = field(repr=False)
    expires_at: float | None = None


class Tokens:
    """The configured bearer tokens (module docstring)."""

    def __init__(
        self,
        *,
        bootstrap: Sequence[BootstrapToken] = (),
        operators: Sequence[OperatorToken] = (),
    ) -> None:
        self.bootstrap = tuple(bootstrap)
        self.operators = tuple(operators)
        self._entries: tuple[BootstrapToken | OperatorToken, ...] = (
            *self.bootstrap,
            *self.operators,
        )
        ids = [t.id for t in self.bootstrap]
        if len(set(ids)) != len(ids):
            raise ValueError("bootstrap token ids must be unique")
        digests = [t.digest for t in self._entries]
        if len(set(digests)) != len(digests):
            raise ValueError("the same token is configured twice")

    def __len__(self) -> int:
        return len(self.bootstrap) + len(self.operators)

    def resolve(self, token: str, *, now: float) -> Identity:
        """The identity ``token`` names at ``now`` (Unix seconds); anonymous, with the
        reason, if it is unknown or expired."""
        presented = digest(token)
        found: BootstrapToken | OperatorToken | None = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest):  # no early exit
                found = entry
        if found is None:
            return anonymous("unknown bearer token")
        if isinstance(found, BootstrapToken):
            if now >= found.expires_at:
                return anonymous(f"bootstrap token {found.id} expired at {_iso(found.expires_at)}")
            return Identity(
                kind=Kind.BOOTSTRAP, name=found.id, via="token", hostnames=found.hostnames
            )
        if found.expires_at is not None and now >= found.expires_at:
            return anonymous(f"token of operator {found.name} expired at {_iso(found.expires_at)}")
        return operator(found.name, found.role, via="token")


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def _expiry(value: object, *, where: str) -> float:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{where}.expires: give a time zone (e.g. 2027-01-31T00:00:00Z)")
        return value.timestamp()
    raise ValueError(f"{where}.expires: a TOML date-time with a time zone, got {value!r}")


def _token(value: object, *, where: str) -> bytes:
    if not isinstance(value, str) or len(value.strip()) < MIN_TOKEN_CHARS:
        raise ValueError(f"{where}.token: a string of at least {MIN_TOKEN_CHARS} characters")
    return digest(value.strip())


def _name(value: object, *, where: str, key: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 253 or not value.isprintable():
        raise ValueError(f"{where}.{key}: 1-253 printable characters, got {value!r}")
    return value


def _only(table: Mapping[str, object], allowed: Iterable[str], *, where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")


def parse_tokens(document: Mapping[str, Any]) -> Tokens:
    """:class:`Tokens` from a parsed token file; ``ValueError`` naming the entry and key
    of the first mistake. A bootstrap token must have an expiry."""
    _only(document, ("bootstrap", "operator"), where="token file")
    bootstrap: list[BootstrapToken] = []
    for i, table in enumerate(document.get("bootstrap") or ()):
        where = f"bootstrap[{i}]"
        _only(table, ("id", "token", "expires", "hostnames"), where=where)
        if "expires" not in table:
            raise ValueError(f"{where}.expires: required (a bootstrap token must expire)")
        hostnames = table.get("hostnames") or []
        if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
            raise ValueError(f"{where}.hostnames: a list of hostnames")
        bootstrap.append(
            BootstrapToken(
                id=_name(table.get("id"), where=where, key="id"),
                digest=_token(table.get("token"), where=where),
                expires_at=_expiry(table["expires"], where=where),
                hostnames=frozenset(hostnames),
            )
        )
    operators: list[OperatorToken] = []
    for i, table in enumerate(document.get("operator") or ()):
        where = f"operator[{i}]"
        _only(table, ("name", "role", "token", "expires"), where=where)
        role = table.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role: one of {list(ROLES)}, got {role!r}")
        operators.append(
            OperatorToken(
                name=_name(table.get("name"), where=where, key="name"),
                role=str(role),
                digest=_token(table.get("token"), where=where),
                expires_at=_expiry(table["expires"], where=where) if "expires" in table else None,
            )
        )
    return Tokens(bootstrap=bootstrap, operators=operators)


def load_tokens(path: Path) -> Tokens:
    """:func:`parse_tokens` of the TOML file at ``path``; ``ValueError`` (naming the file)
    if it cannot be read or is wrong."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {path}: {exc}") from exc
    try:
        return parse_tokens(document)
    except ValueError as exc:
        raise ValueError(f"token file {path}: {exc}") from exc
