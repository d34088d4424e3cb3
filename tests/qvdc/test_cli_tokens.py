"""qvdcctl with an operator bearer token (``--token-file``, ``QVDCCTL_TOKEN_FILE``, the
context file's ``token_file``) against a real controller over real TLS (``tls.mode =
"tls"``: no client certificate needed), real etcd (issue 13 item 3).

A viewer token may list but not create; an admin token may create; no credential at all
is UNAUTHENTICATED; a token never goes out in plain text and never appears in output.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from qvdc import app, cli
from qvdc.settings import AuthSettings, EtcdSettings, TlsSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.pki import Pki
from tests.qvdc.api.helpers import controller_settings

ADMIN = "ops-admin-token-0123456789abcdef"
VIEWER = "ops-viewer-token-0123456789abcdef"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki")
    (tmp_path / "tokens.toml").write_text(
        f"""
[[operator]]
name = "ci"
role = "admin"
token = "{ADMIN}"

[[operator]]
name = "dash"
role = "viewer"
token = "{VIEWER}"
"""
    )
    return pki


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings, pki: Pki, tmp_path: Path
) -> AsyncIterator[app.Controller]:
    server = pki.server()
    settings = controller_settings(etcd_settings).replace(
        tls=TlsSettings(mode="tls", cert=server.cert, key=server.key, client_ca=pki.ca),
        auth=AuthSettings(tokens_file=tmp_path / "tokens.toml"),
    )
    c = app.Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def qvdcctl(*argv: str, env: dict[str, str] | None = None) -> Result:
    base = {"QVDC_CONTEXT": "/nonexistent/context.json"}
    return CliRunner().invoke(cli.cli, list(argv), env={**base, **(env or {})})


def token_file(tmp_path: Path, name: str, token: str) -> Path:
    path = tmp_path / name
    path.write_text(f"{token}\n")
    path.chmod(0o600)
    return path


async def run(*argv: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(qvdcctl, *argv, env=env)


async def test_viewer_token_reads_admin_token_creates_no_token_is_refused(
    controller: app.Controller, store: EtcdStore, pki: Pki, tmp_path: Path
) -> None:
    base = ["--controller", f"127.0.0.1:{controller.port}", "--tls-ca", str(pki.ca)]
    viewer = token_file(tmp_path, "viewer.token", VIEWER)
    admin = token_file(tmp_path, "admin.token", ADMIN)
    create = ["pools", "create", "gold", "--local-dir", "/srv/pools/gold"]

    listed = await run(*base, "--token-file", str(viewer), "pools", "list")
    assert listed.exit_code == 0, listed.output

    refused = await run(*base, "--token-file", str(viewer), *create)
    assert refused.exit_code == cli.EXIT_CONTROLLER, refused.output
    assert "PERMISSION_DENIED" in refused.output and "operator dash (viewer, token)" in (
        refused.output
    )
    kvs, _ = await store.get_prefix("pools/", timeout=5.0)
    assert kvs == []

    none = await run(*base, "pools", "list")
    assert none.exit_code == cli.EXIT_CONTROLLER, none.output
    assert "UNAUTHENTICATED" in none.output

    created = await run(*base, *create, env={"QVDCCTL_TOKEN_FILE": str(admin)})
    assert created.exit_code == 0, created.output
    kvs, _ = await store.get_prefix("pools/", timeout=5.0)
    assert len(kvs) == 1 and b"gold" in kvs[0].value

    # The context file's token_file, relative to the file.
    context = tmp_path / "context.json"
    context.write_text(
        json.dumps(
            {
                "controller": f"127.0.0.1:{controller.port}",
                "tls_ca": str(pki.ca),
                "token_file": viewer.name,
            }
        )
    )
    by_context = await run("pools", "delete", "gold", env={"QVDC_CONTEXT": str(context)})
    assert by_context.exit_code == cli.EXIT_CONTROLLER, by_context.output
    assert "PERMISSION_DENIED" in by_context.output
    got = await run("pools", "get", "gold", env={"QVDC_CONTEXT": str(context)})
    assert got.exit_code == 0, got.output

    for result in (listed, refused, none, created, by_context, got):
        assert VIEWER not in result.output and ADMIN not in result.output


async def test_a_token_is_never_sent_in_plain_text_nor_unreadable(tmp_path: Path) -> None:
    token = token_file(tmp_path, "admin.token", ADMIN)
    plain = await run(
        "--controller", "127.0.0.1:1", "--insecure", "--token-file", str(token), "nodes", "list"
    )
    assert plain.exit_code == cli.EXIT_USAGE, plain.output
    assert "never sent in plain text" in plain.output

    ca = Pki(tmp_path / "pki").ca
    for bad, words in (
        (tmp_path / "missing.token", "cannot read the token file"),
        (token_file(tmp_path, "empty.token", "  "), "holds no token"),
    ):
        result = await run(
            "--controller", "127.0.0.1:1", "--tls-ca", str(ca), "--token-file", str(bad),
            "nodes", "list",
        )  # fmt: skip
        assert result.exit_code == cli.EXIT_USAGE, result.output
        assert words in result.output and bad.name in result.output
