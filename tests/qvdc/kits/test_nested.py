"""discard_nested: one rule for the view's and the intake's nested indexes."""

from __future__ import annotations

from typing import Any

import pytest

from qvdc.kits.nested import discard_nested


@pytest.mark.parametrize(
    ("index", "outer", "inner", "after"),
    [
        pytest.param({"n": {"a", "b"}}, "n", "a", {"n": {"b"}}, id="set-keeps-the-rest"),
        pytest.param({"n": {"a"}}, "n", "a", {}, id="set-emptied-is-dropped"),
        pytest.param({"n": {"a": 1, "b": 2}}, "n", "a", {"n": {"b": 2}}, id="dict-keeps-the-rest"),
        pytest.param({"n": {"a": None}}, "n", "a", {}, id="dict-emptied-is-dropped"),
        pytest.param({"n": {"a": 1}}, "n", "zz", {"n": {"a": 1}}, id="inner-absent"),
        pytest.param({"n": {"a"}}, "m", "a", {"n": {"a"}}, id="outer-absent"),
    ],
)
def test_discard_nested(
    index: dict[str, Any], outer: str, inner: str, after: dict[str, Any]
) -> None:
    discard_nested(index, outer, inner)
    assert index == after
