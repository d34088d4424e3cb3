"""qvdc.kits is a leaf: the standard library only, anywhere in a module (lazy imports
inside functions included), so the node daemon and every controller layer may use it.

import-linter (pyproject.toml) forbids the packages it knows of; this test checks the
positive rule, so a new third-party import fails even if nobody listed it there.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import qvdc.kits

KITS = Path(qvdc.kits.__file__).parent


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (at any depth of its code)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add("qvdc.kits")  # relative: inside kits
            elif node.module is not None:
                found.add(node.module)
    return found


def _not_allowed(names: set[str]) -> set[str]:
    return {
        name
        for name in names
        if name != "__future__"
        and name.split(".")[0] not in sys.stdlib_module_names
        and name != "qvdc.kits"
        and not name.startswith("qvdc.kits.")
    }


def test_every_kits_module_imports_only_the_standard_library_and_kits() -> None:
    modules = sorted(KITS.glob("*.py"))
    assert len(modules) > 3
    offenders = {path.name: _not_allowed(_imports(path)) for path in modules}
    assert offenders == {path.name: set() for path in modules}


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    scratch = tmp_path / "module.py"
    scratch.write_text(
        "import asyncio\n\ndef later():\n    import grpclib.protocol\n    from qvdc import app\n"
    )
    assert _not_allowed(_imports(scratch)) == {"grpclib.protocol", "qvdc"}
