"""``qvdcctl certs``: the files it writes, what it keeps, what it refuses, and that what
it makes completes an mTLS handshake (qvdc.cli_certs)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.x509.oid import NameOID

from qvdc import cli
from qvdc.transport import tls


def certs(directory: Path, *argv: str, env: dict[str, str] | None = None) -> Result:
    args = ["certs", *argv] if env else ["certs", argv[0], "--dir", str(directory), *argv[1:]]
    return CliRunner().invoke(cli.cli, args, env=env)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def organization(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, *, name: str) -> None:
    """A TLS handshake over memory BIOs (raises what either side refuses)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli_ = client.wrap_bio(c_in, c_out, server_hostname=name)
    done = {"server": False, "client": False}
    for _ in range(10):
        for side, obj in (("client", cli_), ("server", srv)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            cli_.write(b"x")  # TLS 1.3: the server checks the client's certificate here
            s_in.write(c_out.read())
            srv.read(1)
            return
    raise AssertionError("handshake did not finish")


def test_init_then_issue_make_a_working_mtls_set(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    r = certs(pki, "init", "--server-name", "qvdc.example")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "ca.crt" in r.output and "controller.crt" in r.output
    assert certs(pki, "issue-node", "host-a").exit_code == 0
    r = certs(pki, "issue-operator", "bob", "--role", "viewer")
    assert r.exit_code == 0, r.output
    assert "O=quantix:viewers" in r.output and "CN=bob" in r.output
    names = sorted(p.name for p in pki.iterdir())
    assert names == [
        "ca.crt", "ca.key", "controller.crt", "controller.key",
        "node-host-a.crt", "node-host-a.key", "operator-bob.crt", "operator-bob.key",
    ]  # fmt: skip
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pki.glob("*.key"))
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    assert organization(load(pki / "node-host-a.crt")) == "quantix:nodes"
    san = load(pki / "controller.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "qvdc.example" in san.value.get_values_for_type(x509.DNSName)

    server = tls.server_context(
        cert=pki / "controller.crt",
        key=pki / "controller.key",
        ca=pki / "ca.crt",
        require_client_cert=True,
    )
    for who in ("node-host-a", "operator-bob"):
        client = tls.client_context(
            ca=pki / "ca.crt", cert=pki / f"{who}.crt", key=pki / f"{who}.key"
        )
        handshake(server, client, name="qvdc.example")
    with pytest.raises(ssl.SSLError):
        handshake(server, tls.client_context(ca=pki / "ca.crt"), name="localhost")


def test_init_keeps_the_ca_unless_forced_and_issue_server_rotates(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert certs(pki, "init").exit_code == 0
    ca = (pki / "ca.crt").read_bytes()
    server = load(pki / "controller.crt").serial_number
    r = certs(pki, "init")
    assert r.exit_code == 0 and "keeping the CA" in r.output and "keeping" in r.output
    assert (pki / "ca.crt").read_bytes() == ca
    assert load(pki / "controller.crt").serial_number == server
    assert certs(pki, "issue-server").exit_code == 0
    rotated = load(pki / "controller.crt")
    assert rotated.serial_number != server
    assert rotated.issuer == load(pki / "ca.crt").subject
    assert certs(pki, "init", "--force").exit_code == 0
    assert (pki / "ca.crt").read_bytes() != ca


def test_the_directory_comes_from_qvdc_pki_dir(tmp_path: Path) -> None:
    pki = tmp_path / "from-env"
    r = certs(pki, "init", env={"QVDC_PKI_DIR": str(pki), "QVDC_CONTEXT": "/nonexistent"})
    assert r.exit_code == 0, r.output
    assert (pki / "ca.crt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["issue-node", "host-a"], "run `qvdcctl certs init` first"),
        (["issue-operator", "bob", "--role", "root"], "Invalid value for '--role'"),
    ],
)
def test_refusals_exit_2_without_a_traceback(tmp_path: Path, argv: list[str], message: str) -> None:
    r = certs(tmp_path / "empty", *argv)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_a_bad_hostname_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert certs(pki, "init").exit_code == 0
    r = certs(pki, "issue-node", "h\u00e9")
    assert r.exit_code == 2 and "hostname must be" in r.output
    assert not list(pki.glob("node-*"))
