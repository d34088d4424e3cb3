"""Real pagination for List RPCs (upstream had none: offset 0, no token).

Items are ordered by a unique string key (pool name, host name); the page
token is an opaque cursor holding the last key of the previous page, so pages
stay consistent when items are added or removed between calls.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TypeVar

from qvdc.domain import errors

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "quantix:v1:"

T = TypeVar("T")


def encode_token(after: str) -> str:
    return base64.urlsafe_b64encode((_TOKEN_PREFIX + after).encode()).decode()


def decode_token(token: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidArgument("malformed page token", field="page_token") from exc
    if not text.startswith(_TOKEN_PREFIX):
        raise errors.InvalidArgument("malformed page token", field="page_token")
    return text[len(_TOKEN_PREFIX) :]


def paginate(
    items: Sequence[T], *, key: Callable[[T], str], page_size: int, page_token: str
) -> tuple[list[T], str, int]:
    """One page of ``items`` in ``key`` order. Returns ``(page, next_token, total)``;
    ``next_token`` is "" on the last page. Raises InvalidArgument for a negative
    ``page_size`` or a malformed ``page_token``."""
    if page_size < 0:
        raise errors.InvalidArgument("must not be negative", field="page_size")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = decode_token(page_token) if page_token else None
    ordered = sorted(items, key=key)
    start = 0
    if after is not None:
        start = next((i for i, item in enumerate(ordered) if key(item) > after), len(ordered))
    page = ordered[start : start + size]
    more = start + size < len(ordered)
    return page, encode_token(key(page[-1])) if more and page else "", len(ordered)
