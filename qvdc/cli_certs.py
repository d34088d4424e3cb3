"""``qvdcctl certs``: a dev certificate authority in a directory (default ``.run/pki``).

    qvdcctl certs init [--server-name NAME ...]     the CA and the controller's certificate
    qvdcctl certs issue-node HOSTNAME               a node's client certificate
    qvdcctl certs issue-operator NAME [--role R]    an operator's (admin or viewer)
    qvdcctl certs issue-server [--server-name ...]  a new controller certificate (rotation)

The files and the identity each certificate carries are those of
:mod:`qvdc.security.certs`. ``init`` keeps an existing CA (issuing from it what is
missing) unless ``--force``; the ``issue-*`` commands overwrite the one certificate they
issue, which is how a certificate is rotated (docs/security.md, "Rotation"). The
directory is made 0700 and keys are written 0600.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from qvdc.security import certs

DEFAULT_DIR = Path(".run/pki")
CA_DAYS = 3650
LEAF_DAYS = 365

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _dir_option() -> Decorator:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: Path(os.environ.get("QVDC_PKI_DIR") or DEFAULT_DIR),
        show_default=f"$QVDC_PKI_DIR or {DEFAULT_DIR}",
        help="directory of the CA and certificates",
    )


def _days_option(default: int) -> Decorator:
    return click.option("--days", type=click.IntRange(1, 36500), default=default, show_default=True)


def _fail(message: str) -> None:
    click.echo(f"qvdcctl: {message}", err=True)
    raise SystemExit(2)


def _load_ca(directory: Path) -> certs.KeyPair:
    try:
        return certs.read_pair(directory=directory, name=certs.CA_NAME)
    except OSError as exc:
        _fail(f"no CA in {directory} ({exc.strerror}): run `qvdcctl certs init` first")
        raise AssertionError("unreachable") from exc


def _write(pair: certs.KeyPair, directory: Path, name: str) -> None:
    cert_path, key_path = certs.write_pair(pair, directory=directory, name=name)
    cert = pair.certificate
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    click.echo(f"wrote {cert_path} and {key_path} ({cert.subject.rfc4514_string()}, until {until})")


def _issue(action: Callable[[], certs.KeyPair]) -> certs.KeyPair:
    try:
        return action()
    except ValueError as exc:
        _fail(str(exc))
        raise AssertionError("unreachable") from exc


@click.group()
def certs_group() -> None:
    """A dev CA and certificates for mTLS (docs/security.md)."""


@certs_group.command("init")
@_dir_option()
@_days_option(CA_DAYS)
@click.option(
    "--server-name",
    multiple=True,
    metavar="NAME",
    help="a DNS name or IP of the controller besides localhost and 127.0.0.1 (repeatable)",
)
@click.option("--force", is_flag=True, help="replace an existing CA (every issued cert is void)")
def init(directory: Path, days: int, server_name: tuple[str, ...], force: bool) -> None:
    """Create the CA and the controller's certificate (what is missing)."""
    ca_cert, _ = certs.paths(directory, certs.CA_NAME)
    if ca_cert.exists() and not force:
        ca = _load_ca(directory)
        click.echo(f"keeping the CA in {ca_cert} (--force replaces it)")
    else:
        ca = _issue(lambda: certs.issue_ca("quantix dev CA", days=days))
        _write(ca, directory, certs.CA_NAME)
    server_cert, _ = certs.paths(directory, certs.CONTROLLER_NAME)
    if force or not server_cert.exists() or not ca_cert.exists():
        pair = _issue(lambda: certs.issue_server(ca, server_name, days=min(days, LEAF_DAYS)))
        _write(pair, directory, certs.CONTROLLER_NAME)
    else:
        click.echo(f"keeping {server_cert} (qvdcctl certs issue-server replaces it)")


@certs_group.command("issue-server")
@_dir_option()
@_days_option(LEAF_DAYS)
@click.option("--server-name", multiple=True, metavar="NAME", help="see `certs init`")
def issue_server(directory: Path, days: int, server_name: tuple[str, ...]) -> None:
    """Issue (or rotate) the controller's certificate."""
    ca = _load_ca(directory)
    pair = _issue(lambda: certs.issue_server(ca, server_name, days=days))
    _write(pair, directory, certs.CONTROLLER_NAME)


@certs_group.command("issue-node")
@click.argument("hostname")
@_dir_option()
@_days_option(LEAF_DAYS)
def issue_node(hostname: str, directory: Path, days: int) -> None:
    """Issue (or rotate) the certificate of node HOSTNAME."""
    ca = _load_ca(directory)
    pair = _issue(lambda: certs.issue_node(ca, hostname, days=days))
    _write(pair, directory, certs.node_name(hostname))


@certs_group.command("issue-operator")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(sorted(certs.ROLE_GROUPS)), default="admin", show_default=True
)
@_dir_option()
@_days_option(LEAF_DAYS)
def issue_operator(name: str, role: str, directory: Path, days: int) -> None:
    """Issue (or rotate) the certificate of operator NAME."""
    ca = _load_ca(directory)
    pair = _issue(lambda: certs.issue_operator(ca, name, role, days=days))
    _write(pair, directory, certs.operator_name(name))
