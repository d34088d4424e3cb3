"""Which pool fields are secrets, and a pool document with them hidden, set or kept.

Secrets are write-only (docs/security.md, "Secrets"): an operator sets one and from then on
reads only its output-only marker (``chapPasswordSet: true``, ``keySet: true``); the value
goes to the nodes the pool is assigned to and nowhere else. This module is the one list of
those fields and the pure document surgery on them. Sealing (encryption at rest) belongs to
the store (:mod:`qvdc.security.sealing`); choosing who receives what belongs to the API.

Documents are the protobuf JSON of ``StoragePool`` (camelCase keys), as stored at
``pools/<id>``. The stored document holds each secret *sealed* in its own field and never
a marker: markers are derived from the value whenever a document is shown.

Update semantics (write-only): a request that leaves a secret empty keeps the stored one,
whatever its update mask says about the enclosing message (``qvdcctl pools update`` reads
the redacted pool, changes a field and sends the backend back); a request sets a new
value by sending it; an explicit clear names the secret's own field path in the update
mask (``spec.backend.iscsi.chap_password``) with the value empty, as AIP-134 reads a
masked field left empty.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SecretField:
    """One secret field of a backend configuration."""

    #: The ``StorageBackend.config`` oneof member, as its JSON key (``iscsi``).
    config: str
    #: The field's JSON key in that config (``chapPassword``).
    key: str
    #: The output-only marker's JSON key (``chapPasswordSet``).
    marker: str
    #: The proto field path error messages and update masks use.
    path: str


CHAP_PASSWORD = SecretField(
    config="iscsi",
    key="chapPassword",
    marker="chapPasswordSet",
    path="spec.backend.iscsi.chap_password",
)

CEPH_KEY = SecretField(
    config="ceph",
    key="key",
    marker="keySet",
    path="spec.backend.ceph.key",
)

#: Every secret of a pool definition. A Ceph pool may instead name a keyring file on the
#: node (``keyring_path``), whose key then never passes the controller. A secret added to
#: the protos is one entry here.
SECRET_FIELDS: tuple[SecretField, ...] = (CHAP_PASSWORD, CEPH_KEY)

_BY_PATH = {f.path: f for f in SECRET_FIELDS}


def by_path(path: str) -> SecretField | None:
    """The secret named by an update-mask path, or None."""
    return _BY_PATH.get(path)


def _config(document: Mapping[str, Any], field: SecretField) -> Mapping[str, Any] | None:
    spec = document.get("spec")
    backend = spec.get("backend") if isinstance(spec, Mapping) else None
    config = backend.get(field.config) if isinstance(backend, Mapping) else None
    return config if isinstance(config, Mapping) else None


def values(document: Mapping[str, Any]) -> dict[SecretField, str]:
    """The non-empty secret values in ``document`` (plain or sealed, as the document has them)."""
    found: dict[SecretField, str] = {}
    for field in SECRET_FIELDS:
        config = _config(document, field)
        value = config.get(field.key) if config is not None else None
        if isinstance(value, str) and value:
            found[field] = value
    return found


def has_config(document: Mapping[str, Any], field: SecretField) -> bool:
    """Whether ``document`` has the backend config ``field`` belongs to."""
    return _config(document, field) is not None


def _rewritten(
    document: Mapping[str, Any], field: SecretField, *, value: str, marker: bool
) -> dict[str, Any]:
    """``document`` with ``field`` set to ``value`` (removed when empty) and its marker set
    (removed when false); only the dicts on the field's path are copied."""
    spec = dict(document["spec"])
    backend = dict(spec["backend"])
    config = dict(backend[field.config])
    config.pop(field.key, None)
    config.pop(field.marker, None)
    if value:
        config[field.key] = value
    if marker:
        config[field.marker] = True
    backend[field.config] = config
    spec["backend"] = backend
    return {**document, "spec": spec}


def replaced(document: Mapping[str, Any], new: Mapping[SecretField, str]) -> dict[str, Any]:
    """``document`` as stored: every secret field set to its value in ``new`` (absent or
    empty: removed), and no markers (a client's marker is ignored, a stored one never
    written). A field whose backend config is absent is left alone."""
    doc = dict(document)
    for field in SECRET_FIELDS:
        if has_config(doc, field):
            doc = _rewritten(doc, field, value=new.get(field, ""), marker=False)
    return doc


def redacted(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` as an operator may read it: every secret removed, its marker true
    where one was set."""
    doc = dict(document)
    for field in SECRET_FIELDS:
        config = _config(doc, field)
        if config is not None and (field.key in config or field.marker in config):
            doc = _rewritten(doc, field, value="", marker=bool(config.get(field.key)))
    return doc


@dataclass(frozen=True, slots=True)
class Planned:
    """What an update does to one secret: seal ``plaintext``, keep the stored value, or clear."""

    plaintext: str = ""
    keep: bool = False


def plan_update(
    *,
    requested: Mapping[SecretField, str],
    mask_paths: Collection[str],
    stored: Mapping[SecretField, str],
) -> dict[SecretField, Planned]:
    """Per secret field, what an UpdatePool does (the module docstring's semantics).
    ``requested``: the non-empty values in the request; ``stored``: in the stored document."""
    plan: dict[SecretField, Planned] = {}
    for field in SECRET_FIELDS:
        if requested.get(field):
            plan[field] = Planned(plaintext=requested[field])
        elif field.path in mask_paths or field not in stored:
            plan[field] = Planned()
        else:
            plan[field] = Planned(keep=True)
    return plan
