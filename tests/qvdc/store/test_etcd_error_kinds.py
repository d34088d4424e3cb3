"""The etcd error counter's kinds (``qvdc_etcd_errors_total{kind}``): one bounded name per
store error class, the specific ones before the general ones they subclass."""

from __future__ import annotations

import pytest

from qvdc.store import records
from qvdc.store.etcd import errors


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (records.StoreTimeout("t"), "timeout"),
        (records.StoreUnavailable("u"), "unavailable"),
        (errors.AuthTokenInvalid("a"), "unavailable"),
        (errors.RevisionCompacted("c"), "compacted"),
        (records.Compacted(7), "compacted"),
        (errors.LeaseNotFound("l"), "lease_not_found"),
        (records.LeaseExpired(5), "lease_not_found"),
        (errors.ResponseTooLarge("big"), "too_large"),
        (records.StoreError("no"), "refused"),
    ],
)
def test_each_store_error_has_its_kind(error: records.StoreError, kind: str) -> None:
    assert errors.kind_of(error) == kind
