"""A dev certificate authority: the CA, the controller's, nodes' and operators' certificates.

Pure functions from PEM bytes to PEM bytes (the ``cryptography`` package), plus
:func:`write_pair` / :func:`read_pair` for a directory of them. Keys are ECDSA P-256:
small, fast to make and accepted by every TLS 1.2+ stack. Every certificate is valid
from five minutes before ``now`` (clock skew between hosts) for ``days`` days.

The identity a certificate carries (the contract :mod:`qvdc.security.identity` parses):

========== ====================== ========================= =========================
who        subject CN             subject O                 SAN / extended key usage
========== ====================== ========================= =========================
node       its hostname           ``quantix:nodes``         DNS = hostname; client + server
operator   the operator's name    ``quantix:operators``     none; client
           (role ``admin``) or
           ``quantix:viewers``
           (role ``viewer``)
controller ``qvdc-controller``    ``quantix:controllers``   DNS localhost, IP 127.0.0.1 and
                                                            the names given; server
========== ====================== ========================= =========================

A node is named by its SAN DNS entry (the CN repeats it for humans and tools); an
operator by its CN, its role by its O. One O per certificate. Like Kubernetes' client
certificates (CN = user, O = group), the CA is the only authority: whoever holds a
key signed by it is who its certificate says.

A directory written by qvdcctl ``certs`` holds ``ca.crt``/``ca.key``,
``controller.crt``/``.key``, ``node-<hostname>.crt``/``.key`` and
``operator-<name>.crt``/``.key`` (:func:`node_name`, :func:`operator_name`); keys are
mode 0600, certificates 0644.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_GROUP = "quantix:nodes"
"""Subject O of a node certificate."""

ROLE_GROUPS: dict[str, str] = {"admin": "quantix:operators", "viewer": "quantix:viewers"}
"""Subject O of an operator certificate, by role."""

CONTROLLER_GROUP = "quantix:controllers"
"""Subject O of the controller's server certificate."""

CONTROLLER_CN = "qvdc-controller"
"""Subject CN of the controller's server certificate."""

CA_NAME = "ca"
CONTROLLER_NAME = "controller"

#: Validity starts this long before ``now``, so a host whose clock is a little behind
#: the issuer's accepts a certificate issued a moment ago.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, PEM-encoded (the key unencrypted, PKCS#8)."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def dns_names(cert_pem: bytes) -> list[str]:
    """The SAN DNS names of a PEM certificate (a node's: its hostname)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in san.value.get_values_for_type(x509.DNSName)]


def node_name(hostname: str) -> str:
    """The file stem of a node's certificate in a PKI directory."""
    return f"node-{hostname}"


def operator_name(name: str) -> str:
    """The file stem of an operator's certificate in a PKI directory."""
    return f"operator-{name}"


def _now(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise ValueError(f"days must be in [1, 36500]: {days}")


def _check_name(what: str, value: str) -> None:
    if not value or len(value) > 253 or not value.isascii() or not value.isprintable():
        raise ValueError(f"{what} must be 1-253 printable ASCII characters: {value!r}")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA key (one made by issue_ca)")
    if cert.public_key() != key.public_key():
        raise ValueError("the CA certificate and key do not belong together")
    return cert, key


def _name(common_name: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def issue_ca(common_name: str, *, days: int, now: datetime.datetime | None = None) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    _check_name("CA name", common_name)
    _check_days(days)
    start = _now(now) - BACKDATE
    key = _new_key()
    name = _name(common_name, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def _issue_leaf(
    ca: KeyPair,
    *,
    subject: x509.Name,
    san: Sequence[x509.GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    days: int,
    now: datetime.datetime | None,
) -> KeyPair:
    _check_days(days)
    ca_cert, ca_key = _load_ca(ca)
    start = _now(now) - BACKDATE
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def issue_node(
    ca: KeyPair, hostname: str, *, days: int, now: datetime.datetime | None = None
) -> KeyPair:
    """A node's certificate: CN and SAN DNS ``hostname``, O ``quantix:nodes``."""
    _check_name("hostname", hostname)
    return _issue_leaf(
        ca,
        subject=_name(hostname, NODE_GROUP),
        san=[x509.DNSName(hostname)],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        days=days,
        now=now,
    )


def issue_operator(
    ca: KeyPair, name: str, role: str, *, days: int, now: datetime.datetime | None = None
) -> KeyPair:
    """An operator's client certificate: CN ``name``, O the group of ``role``."""
    _check_name("operator name", name)
    group = ROLE_GROUPS.get(role)
    if group is None:
        raise ValueError(f"role must be one of {sorted(ROLE_GROUPS)}: {role!r}")
    return _issue_leaf(
        ca,
        subject=_name(name, group),
        san=[],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
        now=now,
    )


def issue_server(
    ca: KeyPair, names: Sequence[str] = (), *, days: int, now: datetime.datetime | None = None
) -> KeyPair:
    """The controller's server certificate for ``localhost``, ``127.0.0.1`` and
    ``names`` (each an IP address or a DNS name)."""
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in ("localhost", "127.0.0.1", *names):
        _check_name("server name", name)
        if name in seen:
            continue
        seen.add(name)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return _issue_leaf(
        ca,
        subject=_name(CONTROLLER_CN, CONTROLLER_GROUP),
        san=sans,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        days=days,
        now=now,
    )


def paths(directory: Path, name: str) -> tuple[Path, Path]:
    """``(certificate, key)`` paths of ``name`` in ``directory``."""
    return directory / f"{name}.crt", directory / f"{name}.key"


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pair(pair: KeyPair, *, directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.crt`` (0644) and ``name.key`` (0600) into ``directory`` (made 0700
    if missing), each atomically (a reader sees the old file or the new one), the key
    first, so that a certificate never sits next to a key it does not match for long.
    Returns their paths."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = paths(directory, name)
    _write_atomically(key_path, pair.key_pem, mode=0o600)
    _write_atomically(cert_path, pair.cert_pem, mode=0o644)
    return cert_path, key_path


def read_pair(*, directory: Path, name: str) -> KeyPair:
    """The pair :func:`write_pair` wrote."""
    cert_path, key_path = paths(directory, name)
    return KeyPair(cert_pem=cert_path.read_bytes(), key_pem=key_path.read_bytes())
