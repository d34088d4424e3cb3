"""The secret fields of a pool document: redacted for operators, replaced for storage, and
what an update does to each (keep / set / clear), as named table cases."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qvdc.domain import secrets
from qvdc.domain.secrets import CHAP_PASSWORD, Planned


def _pool(**iscsi: Any) -> dict[str, Any]:
    return {
        "id": "p1",
        "name": "san",
        "spec": {
            "backend": {
                "type": "ISCSI",
                "iscsi": {"portal": "10.0.0.5:3260", "target": "iqn.2024-01.x:t", **iscsi},
            },
            "assignedNodeIds": ["n1"],
        },
    }


def test_redacted_drops_the_value_and_sets_the_marker_without_touching_the_input() -> None:
    doc = _pool(chapEnabled=True, chapUser="u", chapPassword="hunter2hunter2")
    before = copy.deepcopy(doc)
    shown = secrets.redacted(doc)
    assert doc == before  # the view's stored document is shared: never mutated
    iscsi = shown["spec"]["backend"]["iscsi"]
    assert "chapPassword" not in iscsi and iscsi["chapPasswordSet"] is True
    assert iscsi["chapUser"] == "u" and shown["spec"]["assignedNodeIds"] == ["n1"]
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize(
    ("iscsi", "expected"),
    [
        pytest.param({}, {}, id="no-password-no-marker"),
        # A client cannot make a pool look protected: markers come from the value only.
        pytest.param({"chapPasswordSet": True}, {}, id="client-marker-alone-dropped"),
        pytest.param({"chapPassword": ""}, {}, id="empty-value-is-unset"),
    ],
)
def test_redacted_marker_follows_the_value(iscsi: dict[str, Any], expected: dict[str, Any]) -> None:
    shown = secrets.redacted(_pool(**iscsi))["spec"]["backend"]["iscsi"]
    assert {k: v for k, v in shown.items() if k.startswith("chap")} == expected


def test_redacted_leaves_other_backends_alone() -> None:
    doc = {"id": "p", "spec": {"backend": {"type": "NFS", "nfs": {"server": "s"}}}}
    assert secrets.redacted(doc) == doc
    assert secrets.redacted({"id": "p"}) == {"id": "p"}


def test_values_and_replaced_store_exactly_what_is_given() -> None:
    doc = _pool(chapPassword="plain-plain-1", chapPasswordSet=True)
    assert secrets.values(doc) == {CHAP_PASSWORD: "plain-plain-1"}
    stored = secrets.replaced(doc, {CHAP_PASSWORD: "qvdc-sealed:v1:k:xyz"})
    iscsi = stored["spec"]["backend"]["iscsi"]
    assert iscsi["chapPassword"] == "qvdc-sealed:v1:k:xyz" and "chapPasswordSet" not in iscsi
    cleared = secrets.replaced(doc, {})["spec"]["backend"]["iscsi"]
    assert "chapPassword" not in cleared and "chapPasswordSet" not in cleared
    assert secrets.values(secrets.replaced(doc, {})) == {}


def test_by_path_names_only_secret_fields() -> None:
    assert secrets.by_path("spec.backend.iscsi.chap_password") is CHAP_PASSWORD
    assert secrets.by_path("spec.backend.iscsi.chap_user") is None
    assert secrets.by_path("spec.backend") is None


@pytest.mark.parametrize(
    ("requested", "mask", "stored", "expected"),
    [
        pytest.param({}, [], {CHAP_PASSWORD: "S"}, Planned(keep=True), id="empty-keeps"),
        pytest.param(
            {}, ["spec.backend"], {CHAP_PASSWORD: "S"}, Planned(keep=True), id="backend-mask-keeps"
        ),
        pytest.param({}, ["spec"], {CHAP_PASSWORD: "S"}, Planned(keep=True), id="spec-mask-keeps"),
        pytest.param(
            {CHAP_PASSWORD: "new-password-1"},
            [],
            {CHAP_PASSWORD: "S"},
            Planned(plaintext="new-password-1"),
            id="value-sets",
        ),
        pytest.param(
            {},
            ["spec.backend.iscsi.chap_password"],
            {CHAP_PASSWORD: "S"},
            Planned(),
            id="own-path-empty-clears",
        ),
        pytest.param(
            {CHAP_PASSWORD: "new-password-1"},
            ["spec.backend.iscsi.chap_password"],
            {CHAP_PASSWORD: "S"},
            Planned(plaintext="new-password-1"),
            id="own-path-with-value-sets",
        ),
        pytest.param({}, [], {}, Planned(), id="nothing-stored-nothing-sent"),
    ],
)
def test_plan_update(
    requested: dict[secrets.SecretField, str],
    mask: list[str],
    stored: dict[secrets.SecretField, str],
    expected: Planned,
) -> None:
    plan = secrets.plan_update(requested=requested, mask_paths=mask, stored=stored)
    # Every other secret field (the Ceph key) is neither stored nor sent: nothing kept.
    assert plan == {
        field: expected if field is CHAP_PASSWORD else Planned() for field in secrets.SECRET_FIELDS
    }
