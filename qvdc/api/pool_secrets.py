"""A pool document's secrets on their three ways: sealed into etcd, redacted for
operators, opened for the pool's own nodes (docs/security.md, "Secrets").

* Writes seal every secret with the keyring's current key before the catalog stores the
  document; without a configured key a request that carries a secret is refused with
  FAILED_PRECONDITION naming the field and ``secrets.key_file``, so no secret is ever
  stored in plain text.
* UpdatePool keeps a stored secret the request leaves empty, clears one whose own path is
  in the update mask, and re-seals a kept one with the current key when it was sealed with
  an older key (or stored in plain text before sealing existed): any update finishes a
  key rotation for its pool.
* Operators get :func:`qvdc.domain.secrets.redacted` documents; the heartbeat responses of
  the nodes a pool is assigned to get the opened document. A value no configured key
  opens is left out of the node's copy and logged (pool, field, key id; never a value).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from qvdc.domain import errors, secrets
from qvdc.domain.secrets import SecretField
from qvdc.security import sealing

log = logging.getLogger(__name__)

Document = dict[str, Any]

KEY_SETTING = "secrets.key_file, --secrets-key-file"


def _context(pool_id: str, field: SecretField) -> str:
    return f"{pool_id}\x00{field.path}"


class PoolSecrets:
    def __init__(self, *, keyring: sealing.Keyring | None = None) -> None:
        # No keyring: every request carrying a secret is refused.
        self.keyring = keyring or sealing.Keyring()

    def _seal(self, pool_id: str, field: SecretField, plaintext: str) -> str:
        if not self.keyring.can_seal:
            raise errors.FailedPrecondition(
                f"cannot store a secret: no secrets key is configured ({KEY_SETTING})",
                field=field.path,
            )
        return self.keyring.seal(plaintext, context=_context(pool_id, field))

    def sealed_new(self, document: Mapping[str, Any]) -> Document:
        """A new pool's document as stored: its secrets sealed."""
        pool_id = str(document["id"])
        return secrets.replaced(
            document,
            {f: self._seal(pool_id, f, v) for f, v in secrets.values(document).items()},
        )

    def updated(
        self,
        *,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        request_spec: Mapping[str, Any],
        mask_paths: Collection[str],
    ) -> tuple[Document, Document]:
        """``(to_check, to_store)`` for an UpdatePool that turned ``old`` into ``new``:
        the document with the secrets it will hold in plain text (for the validation, which
        must see a kept secret as it was set and a new one as typed), and the same
        document sealed. ``request_spec``: the request's spec as JSON."""
        pool_id = str(old["id"])
        stored = secrets.values(old)
        plan = secrets.plan_update(
            requested=secrets.values({"spec": request_spec}),
            mask_paths=mask_paths,
            stored=stored,
        )
        check: dict[SecretField, str] = {}
        store: dict[SecretField, str] = {}
        for field, planned in plan.items():
            if planned.plaintext:
                check[field] = planned.plaintext
                store[field] = self._seal(pool_id, field, planned.plaintext)
            elif planned.keep:
                check[field] = self._opened(pool_id, field, stored[field])
                store[field] = self._resealed(pool_id, field, stored[field])
        return secrets.replaced(new, check), secrets.replaced(new, store)

    def _opened(self, pool_id: str, field: SecretField, value: str) -> str:
        """A kept value as the validation must see it: opened (a Ceph key's format is
        checked, not its envelope's); as stored when no configured key opens it."""
        if not sealing.is_sealed(value):
            return value
        try:
            return self.keyring.unseal(value, context=_context(pool_id, field))
        except sealing.SealError:
            return value  # _resealed logs it; the check then sees the envelope

    def _resealed(self, pool_id: str, field: SecretField, value: str) -> str:
        """A kept value, sealed with the current key if it is not already (a plain legacy
        value, or one sealed with an older key); as it is when that cannot be done."""
        if not self.keyring.can_seal or self.keyring.is_current(value):
            return value
        if not sealing.is_sealed(value):
            return self._seal(pool_id, field, value)
        try:
            plaintext = self.keyring.unseal(value, context=_context(pool_id, field))
        except sealing.SealError as exc:
            log.warning(
                "pool %s: %s kept as stored, cannot re-seal it: %s", pool_id, field.path, exc
            )
            return value
        return self._seal(pool_id, field, plaintext)

    @staticmethod
    def for_operator(document: Mapping[str, Any]) -> Document:
        return secrets.redacted(document)

    def for_node(self, document: Mapping[str, Any]) -> Document:
        """The document a node the pool is assigned to receives: secrets opened."""
        pool_id = str(document.get("id", ""))
        opened: dict[SecretField, str] = {}
        for field, value in secrets.values(document).items():
            if not sealing.is_sealed(value):
                opened[field] = value  # stored before sealing existed
                continue
            try:
                opened[field] = self.keyring.unseal(value, context=_context(pool_id, field))
            except sealing.SealError as exc:
                log.warning("pool %s: %s not sent to its nodes: %s", pool_id, field.path, exc)
        return secrets.replaced(document, opened)
