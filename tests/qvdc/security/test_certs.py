"""The dev CA's certificates carry the identity encoding qvdc.security.identity parses."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qvdc.security import certs


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.issue_ca("unit CA", days=3)


def _o(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _verify_signed_by(cert: x509.Certificate, ca: certs.KeyPair) -> None:
    cert.verify_directly_issued_by(ca.certificate)


def test_ca_is_a_ca_for_leaves_only(ca: certs.KeyPair) -> None:
    cert = ca.certificate
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    assert cert.subject == cert.issuer
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(
        days=3, minutes=5
    )


def test_node_certificate_names_its_host_in_san_dns(ca: certs.KeyPair) -> None:
    cert = certs.issue_node(ca, "host-a.example", days=1).certificate
    _verify_signed_by(cert, ca)
    assert _cn(cert) == "host-a.example"
    assert _o(cert) == ["quantix:nodes"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host-a.example"]
    assert set(_eku(cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    ("role", "group"), [("admin", "quantix:operators"), ("viewer", "quantix:viewers")]
)
def test_operator_certificate_carries_its_role_as_o(
    ca: certs.KeyPair, role: str, group: str
) -> None:
    cert = certs.issue_operator(ca, "alice", role, days=1).certificate
    _verify_signed_by(cert, ca)
    assert _cn(cert) == "alice"
    assert _o(cert) == [group]
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_unknown_role_is_refused(ca: certs.KeyPair) -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        certs.issue_operator(ca, "mallory", "root", days=1)


def test_server_certificate_covers_loopback_and_given_names(ca: certs.KeyPair) -> None:
    cert = certs.issue_server(ca, ["qvdc.example", "10.0.0.7", "localhost"], days=1).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "qvdc.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.7"]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _o(cert) == ["quantix:controllers"]


def test_validity_follows_now_and_days(ca: certs.KeyPair) -> None:
    now = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = certs.issue_node(ca, "old", days=2, now=now).certificate
    assert cert.not_valid_before_utc == now - certs.BACKDATE
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=2)


def test_a_key_that_is_not_the_cas_is_refused(ca: certs.KeyPair) -> None:
    other = certs.issue_ca("other", days=1)
    with pytest.raises(ValueError, match="do not belong together"):
        certs.issue_node(certs.KeyPair(cert_pem=ca.cert_pem, key_pem=other.key_pem), "h", days=1)


@pytest.mark.parametrize("days", [0, -1, 36501])
def test_days_out_of_range_are_refused(ca: certs.KeyPair, days: int) -> None:
    with pytest.raises(ValueError, match="days"):
        certs.issue_node(ca, "h", days=days)


@pytest.mark.parametrize("hostname", ["", "h\nx", "h\u00e9"])
def test_bad_names_are_refused(ca: certs.KeyPair, hostname: str) -> None:
    with pytest.raises(ValueError, match="hostname"):
        certs.issue_node(ca, hostname, days=1)


def test_write_pair_keeps_the_key_private_and_reads_back(ca: certs.KeyPair, tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pair = certs.issue_node(ca, "h", days=1)
    cert_path, key_path = certs.write_pair(pair, directory=directory, name="node-h")
    assert (cert_path.name, key_path.name) == ("node-h.crt", "node-h.key")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert certs.read_pair(directory=directory, name="node-h") == pair
    assert sorted(p.name for p in directory.iterdir()) == ["node-h.crt", "node-h.key"]


def test_dns_names_reads_a_nodes_hostname(ca: certs.KeyPair) -> None:
    assert certs.dns_names(certs.issue_node(ca, "host-a", days=1).cert_pem) == ["host-a"]
    assert certs.dns_names(certs.issue_operator(ca, "bob", "admin", days=1).cert_pem) == []
