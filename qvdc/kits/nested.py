"""Indexes kept as a table of small sets or tables (``node -> {pool: row}``)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def discard_nested(index: MutableMapping[str, Any], outer: str, inner: str) -> None:
    """Remove ``inner`` from the set or dict at ``index[outer]`` (if there), and drop
    ``index[outer]`` once it is empty, so an index holds no empty entries."""
    members = index.get(outer)
    if members is None:
        return
    if isinstance(members, dict):
        members.pop(inner, None)
    else:
        members.discard(inner)
    if not members:
        del index[outer]
