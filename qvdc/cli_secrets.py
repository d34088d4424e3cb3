"""``qvdcctl secrets``: the key files pool secrets are sealed with in etcd.

    qvdcctl secrets new-key FILE    a fresh key (mode 600, never overwriting a file)
    qvdcctl secrets key-id FILE     the id sealed values name this key by

The controller reads them as ``secrets.key_file`` (current) and ``secrets.old_key_files``
(rotated out, open only); docs/security.md, "Secrets". Neither command prints key material.
"""

from __future__ import annotations

from pathlib import Path

import click

from qvdc.security import sealing


@click.group()
def secrets_group() -> None:
    """Key files for sealing pool secrets (CHAP passwords) in etcd."""


@secrets_group.command("new-key")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def new_key(file: Path) -> None:
    """Write a fresh key to FILE (mode 600); refuses an existing FILE."""
    try:
        key = sealing.write_new_key(file)
    except FileExistsError:
        raise click.ClickException(f"{file} exists: keys are never overwritten") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {file}: {exc.strerror}") from None
    click.echo(f"key {key.id} written to {file}")


@secrets_group.command("key-id")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def key_id(file: Path) -> None:
    """Print the id of the key in FILE (what sealed values in etcd name)."""
    try:
        key = sealing.load_key(file)
    except sealing.SealError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key.id)
