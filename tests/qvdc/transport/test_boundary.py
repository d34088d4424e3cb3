"""qvdc.transport is the one place that touches library internals.

import-linter (pyproject.toml) keeps grpclib's internal modules out of every other
package; this test does the same for the private attributes the transport wraps:
no module of qvdc or the node daemon outside qvdc/transport may use them, so an
upgrade that changes one breaks only qvdc/transport and its contract tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import node
import qvdc

#: Private members of grpclib and betterproto2 objects, wrapped by qvdc.transport.
PRIVATE = frozenset(
    {
        "_maybe_raise",  # grpclib.client.Stream: streams.raise_status
        "__aenter__",  # grpclib.client.Stream entered by hand: streams.open_stream
        "__aexit__",
        "_server",  # grpclib.server.Server's asyncio server: use Server.start(sock=...)
        "_unknown_fields",  # betterproto2.Message: heartbeat_codec
        "_betterproto",  # betterproto2's class metadata
    }
)

TRANSPORT = Path(qvdc.__file__).parent / "transport"


def _sources() -> list[Path]:
    roots = [Path(qvdc.__file__).parent, Path(node.__file__).parent]
    return sorted(
        path for root in roots for path in root.rglob("*.py") if TRANSPORT not in path.parents
    )


def _private_uses(path: Path) -> list[str]:
    """``x.<private>``, and ``getattr(x, "<private>", ...)`` / ``hasattr`` / ``setattr``."""
    uses = []
    for n in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(n, ast.Attribute) and n.attr in PRIVATE:
            uses.append(f"{path.name}:{n.lineno} .{n.attr}")
        elif (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id in {"getattr", "hasattr", "setattr"}
            and len(n.args) >= 2
            and isinstance(n.args[1], ast.Constant)
            and n.args[1].value in PRIVATE
        ):
            uses.append(f"{path.name}:{n.lineno} .{n.args[1].value}")
    return uses


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(p.parents[1])))
def test_no_module_outside_the_transport_uses_library_internals(path: Path) -> None:
    assert _private_uses(path) == []


def test_the_scan_finds_them_in_the_transport() -> None:
    """The scan is not blind: the transport itself uses what it wraps."""
    found = {use.split(".")[-1] for p in TRANSPORT.glob("*.py") for use in _private_uses(p)}
    assert {"_maybe_raise", "__aenter__", "__aexit__", "_unknown_fields"} <= found
