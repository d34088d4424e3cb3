"""An external etcd with client TLS and with user/password auth: real etcd processes of
the tests' own, certificates from qvdc.security.certs, users made with etcdctl."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aetcd
import pytest

from qvdc.settings import EtcdSettings
from qvdc.store import embedded, etcd
from qvdc.store.etcd import errors
from tests.fixtures.etcd import TEST_ETCD_SETTINGS, EtcdServer
from tests.fixtures.pki import Files, Pki

PREFIX = "/quantix/"


def _etcd(tmp_path: Path, **kwargs: object) -> EtcdServer:
    client_port, peer_port = embedded.pick_free_ports(2)
    return EtcdServer(
        binary=embedded.find_etcd(),
        data_dir=tmp_path / "etcd" / "data",
        client_port=client_port,
        peer_port=peer_port,
        settings=TEST_ETCD_SETTINGS,
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def running(server: EtcdServer) -> Iterator[EtcdServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected(settings: EtcdSettings) -> AsyncIterator[etcd.EtcdStore]:
    store = await etcd.EtcdStore.connect(settings=settings)
    try:
        yield store
    finally:
        await store.close()


async def roundtrip(store: etcd.EtcdStore, key: str) -> None:
    """A put, a get and a watch event: each kind of call the store makes."""
    revision = await store.put(key, b"v1")
    got = await store.get(key)
    assert got is not None and got.value == b"v1"
    events = store.watch_prefix(key, start_revision=revision)
    async with contextlib.aclosing(events):
        async with asyncio.timeout(10):
            event = await anext(events)
    assert event.key == key and event.value == b"v1"


# ---------------------------------------------------------------- user / password


def etcdctl(server: EtcdServer, *args: str) -> str:
    done = subprocess.run(
        ["etcdctl", f"--endpoints={server.endpoint}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"etcdctl {args}: {done.stderr}"
    return done.stdout


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """etcd with auth enabled: root, and user ``qvdc`` with read-write on /quantix/ only."""
    with running(_etcd(tmp_path)) as server:
        etcdctl(server, "user", "add", "root:root-pw", "--interactive=false")
        etcdctl(server, "user", "grant-role", "root", "root")
        etcdctl(server, "user", "add", "qvdc:s3cret pw", "--interactive=false")
        etcdctl(server, "role", "add", "qvdc-rw")
        etcdctl(server, "role", "grant-permission", "qvdc-rw", "--prefix=true", "readwrite", PREFIX)
        etcdctl(server, "user", "grant-role", "qvdc", "qvdc-rw")
        etcdctl(server, "auth", "enable")
        yield server


def password_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etcd-password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


async def test_user_and_password_file_authenticate(auth_etcd: EtcdServer, tmp_path: Path) -> None:
    settings = EtcdSettings(
        endpoints=(auth_etcd.endpoint,),
        prefix=PREFIX,
        user="qvdc",
        password_file=password_file(tmp_path, "s3cret pw"),
    )
    async with connected(settings) as store:
        await roundtrip(store, "pools/a")
    # etcd checks the role: the same user outside its prefix is refused.
    outside = EtcdSettings(
        endpoints=settings.endpoints,
        prefix="/elsewhere/",
        user="qvdc",
        password_file=settings.password_file,
    )
    with pytest.raises(etcd.StoreError, match="permission denied"):
        async with connected(outside):
            pass


@pytest.mark.parametrize("how", ["wrong password", "no user"])
async def test_without_the_right_password_nothing_is_read_or_written(
    auth_etcd: EtcdServer, tmp_path: Path, how: str
) -> None:
    if how == "no user":
        settings = EtcdSettings(endpoints=(auth_etcd.endpoint,), prefix=PREFIX)
    else:
        settings = EtcdSettings(
            endpoints=(auth_etcd.endpoint,),
            prefix=PREFIX,
            user="qvdc",
            password_file=password_file(tmp_path, "guess"),
        )
    with pytest.raises(etcd.StoreError, match=r"authentication failed|user name is empty"):
        async with connected(settings):
            pass


async def test_a_refused_token_reconnects_and_authenticates_again(
    auth_etcd: EtcdServer, tmp_path: Path
) -> None:
    settings = EtcdSettings(
        endpoints=(auth_etcd.endpoint,),
        prefix=PREFIX,
        user="qvdc",
        password_file=password_file(tmp_path, "s3cret pw"),
    )
    async with connected(settings) as store:
        await store.put("k", b"1")
        # Disabling and enabling auth drops every token etcd handed out.
        etcdctl(auth_etcd, "--user=root:root-pw", "auth", "disable")
        etcdctl(auth_etcd, "--user=root:root-pw", "auth", "enable")
        with pytest.raises(errors.AuthTokenInvalid, match="invalid auth token"):
            await store.get("k")
        got = await store.get("k")  # a new connection, a new token
        assert got is not None and got.value == b"1"


def test_settings_refuse_half_an_auth_or_tls_setup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"user and etcd\.password_file"):
        EtcdSettings(endpoints=("h:1",), user="qvdc")
    with pytest.raises(ValueError, match=r"tls_cert and etcd\.tls_key"):
        EtcdSettings(endpoints=("h:1",), tls_ca=tmp_path, tls_cert=tmp_path)
    with pytest.raises(ValueError, match=r"needs etcd\.tls_ca"):
        EtcdSettings(endpoints=("h:1",), tls_cert=tmp_path, tls_key=tmp_path)
    with pytest.raises(ValueError, match="external etcd"):
        EtcdSettings(tls_ca=tmp_path)


# ---------------------------------------------------------------- client TLS


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def tls_etcd(tmp_path: Path, pki: Pki) -> Iterator[EtcdServer]:
    """etcd serving TLS only, requiring a client certificate from the test CA."""
    server_files = pki.server("etcd")
    client_files = pki.node("qvdc-controller")
    health = ssl.create_default_context(cafile=pki.ca)  # HTTP/1.1: no h2 in ALPN
    health.load_cert_chain(client_files.cert, client_files.key)
    server = _etcd(
        tmp_path,
        tls=health,
        extra_args=(
            f"--cert-file={server_files.cert}",
            f"--key-file={server_files.key}",
            f"--trusted-ca-file={pki.ca}",
            "--client-cert-auth",
        ),
    )
    with running(server):
        yield server


def tls_settings(server: EtcdServer, ca: Path, client: Files | None) -> EtcdSettings:
    return EtcdSettings(
        endpoints=(server.endpoint,),
        prefix=PREFIX,
        timeout=3.0,
        tls_ca=ca,
        tls_cert=client.cert if client else None,
        tls_key=client.key if client else None,
    )


async def test_client_tls_with_a_certificate_works(tls_etcd: EtcdServer, pki: Pki) -> None:
    settings = tls_settings(tls_etcd, pki.ca, pki.node("qvdc-controller"))
    async with connected(settings) as store:
        await roundtrip(store, "pools/a")


@pytest.mark.parametrize("how", ["no client certificate", "another CA's", "plain text"])
async def test_etcd_refuses_clients_without_a_good_certificate(
    tls_etcd: EtcdServer, pki: Pki, tmp_path: Path, how: str
) -> None:
    if how == "plain text":
        settings = EtcdSettings(endpoints=(tls_etcd.endpoint,), prefix=PREFIX, timeout=3.0)
    elif how == "no client certificate":
        settings = tls_settings(tls_etcd, pki.ca, None)
    else:
        settings = tls_settings(tls_etcd, pki.ca, pki.foreign_node("qvdc-controller"))
    with pytest.raises(etcd.StoreUnavailable, match="no etcd endpoint answered"):
        async with connected(settings):
            pass


async def test_the_client_checks_etcds_certificate(
    tls_etcd: EtcdServer, pki: Pki, tmp_path: Path
) -> None:
    other = Pki(tmp_path / "other")
    settings = tls_settings(tls_etcd, other.ca, pki.node("qvdc-controller"))
    with pytest.raises(etcd.StoreUnavailable, match="no etcd endpoint answered"):
        async with connected(settings):
            pass


async def test_unreadable_tls_files_name_the_file(tls_etcd: EtcdServer, pki: Pki) -> None:
    missing = pki.directory / "missing.crt"
    settings = tls_settings(tls_etcd, missing, None)
    with pytest.raises(etcd.StoreUnavailable, match="cannot read the etcd CA certificate"):
        async with connected(settings):
            pass


def test_tls_client_connect_is_aetcds_own_but_the_channel() -> None:
    """TlsClient.connect copies aetcd 1.0.0's connect: review it when aetcd changes."""
    source = inspect.getsource(aetcd.Client.connect)
    assert "rpc.insecure_channel(target, options=self._options.items())" in source
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == "739bd1375223094e", digest
