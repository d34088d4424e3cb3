"""registry: built-ins, the opt-in fake, and third-party entry points that may be broken.

Third-party backends are real installed distributions as far as
``importlib.metadata`` is concerned: each test writes ``*.dist-info``
directories (METADATA + entry_points.txt) and plugin modules into a temporary
directory and puts it on ``sys.path``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import storage_backends
from storage_backends import base, fake, local_dir, registry

PLUGIN_MODULES = {
    "qx_plugin_good": """
from storage_backends.fake import FakeBackend

class GoodBackend(FakeBackend):
    def __init__(self, **options):
        super().__init__(kind="good")
        self.options = options

NOT_CALLABLE = 42

def not_a_backend(**options):
    return object()

def exploding(**options):
    raise RuntimeError("no licence server")
""",
    "qx_plugin_broken": """
raise ImportError("librbd.so.1: cannot open shared object file")
""",
}

THIRD_PARTY_ENTRY_POINTS = """\
[quantix.storage_backends]
good = qx_plugin_good:GoodBackend
broken = qx_plugin_broken:Backend
missing = qx_no_such_module:Backend
notcallable = qx_plugin_good:NOT_CALLABLE
notabackend = qx_plugin_good:not_a_backend
exploding = qx_plugin_good:exploding
local_dir = qx_plugin_good:GoodBackend
fake = qx_plugin_good:GoodBackend

[some.other.group]
other = qx_plugin_good:GoodBackend
"""

# What the project's own pyproject declares: naming the built-in is not a hijack.
OWN_ENTRY_POINTS = """\
[quantix.storage_backends]
local_dir = storage_backends.local_dir:LocalDirBackend
"""


def write_distribution(site: Path, *, name: str, entry_points: str) -> None:
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    for module, source in PLUGIN_MODULES.items():
        (site / f"{module}.py").write_text(source)
    write_distribution(site, name="qx_plugins", entry_points=THIRD_PARTY_ENTRY_POINTS)
    write_distribution(site, name="quantix_self", entry_points=OWN_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    try:
        yield site
    finally:
        for module in ("qx_plugin_good", "qx_plugin_broken"):
            sys.modules.pop(module, None)


# -- built-ins ---------------------------------------------------------------------------


def test_local_dir_is_built_in_and_fake_is_opt_in() -> None:
    assert "local_dir" in registry.available_kinds()
    assert "fake" not in registry.available_kinds()
    assert "fake" in registry.available_kinds(include_fake=True)


def test_package_reexports_the_registry_and_base_names() -> None:
    assert storage_backends.get_backend is registry.get_backend
    assert storage_backends.available_kinds is registry.available_kinds
    assert storage_backends.PoolInfo is base.PoolInfo
    assert storage_backends.InvalidConfig is base.InvalidConfig


def test_get_backend_builds_local_dir_with_options(tmp_path: Path) -> None:
    backend = registry.get_backend("local_dir", pools_root=tmp_path, full_threshold=0.2)
    assert isinstance(backend, local_dir.LocalDirBackend)
    assert isinstance(backend, base.StorageBackend)
    assert backend.pool_path(base.PoolSpec(pool_id="p", kind="local_dir")) == str(tmp_path / "p")


def test_get_backend_fake_only_when_asked() -> None:
    with pytest.raises(base.InvalidConfig, match="unknown storage backend 'fake'"):
        registry.get_backend("fake")
    backend = registry.get_backend("fake", include_fake=True, kind="bench")
    assert isinstance(backend, fake.FakeBackend)
    assert backend.kind == "bench"


def test_unknown_kind_lists_the_available_ones() -> None:
    with pytest.raises(base.InvalidConfig) as caught:
        registry.get_backend("zfs")
    assert str(caught.value) == (
        f"unknown storage backend 'zfs'; available: {', '.join(registry.available_kinds())}"
    )


def test_bad_options_are_invalid_config() -> None:
    with pytest.raises(
        base.InvalidConfig, match="storage backend 'local_dir' rejected its options"
    ):
        registry.get_backend("local_dir")  # pools_root missing
    with pytest.raises(base.InvalidConfig, match="pools_root must be absolute"):
        registry.get_backend("local_dir", pools_root=Path("relative"))


# -- entry points ---------------------------------------------------------------------------


@pytest.mark.usefixtures("plugins")
def test_working_entry_point_is_available_and_builds() -> None:
    assert "good" in registry.available_kinds()
    backend = registry.get_backend("good", region="eu")
    assert backend.kind == "good"
    assert getattr(backend, "options", None) == {"region": "eu"}


@pytest.mark.usefixtures("plugins")
def test_entry_points_that_fail_to_load_are_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=registry.__name__)
    kinds = registry.available_kinds()
    assert "broken" not in kinds
    assert "missing" not in kinds
    assert "notcallable" not in kinds
    messages = [r.getMessage() for r in caplog.records]
    assert any("'broken'" in m and "failed to load" in m for m in messages)
    assert any("'missing'" in m and "failed to load" in m for m in messages)
    assert any("'notcallable'" in m and "not callable" in m for m in messages)
    broken = next(r for r in caplog.records if "'broken'" in r.getMessage())
    assert broken.exc_info is not None  # logged with the traceback
    assert "librbd.so.1" in str(broken.exc_info[1])
    with pytest.raises(base.InvalidConfig, match="unknown storage backend 'broken'"):
        registry.get_backend("broken")


@pytest.mark.usefixtures("plugins")
def test_entry_points_cannot_replace_built_ins(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger=registry.__name__)
    assert isinstance(
        registry.get_backend("local_dir", pools_root=tmp_path), local_dir.LocalDirBackend
    )
    assert "fake" not in registry.available_kinds()
    hijacks = [r.getMessage() for r in caplog.records if "is a built-in kind" in r.getMessage()]
    assert any("local_dir = qx_plugin_good:GoodBackend" in m for m in hijacks)
    assert any("fake = qx_plugin_good:GoodBackend" in m for m in hijacks)
    # The project's own entry point names the built-in: no warning for it.
    assert not any("storage_backends.local_dir:LocalDirBackend" in m for m in hijacks)


@pytest.mark.usefixtures("plugins")
def test_entry_point_of_another_group_is_ignored() -> None:
    assert "other" not in registry.available_kinds()


@pytest.mark.usefixtures("plugins")
def test_factory_returning_a_non_backend_is_invalid_config() -> None:
    with pytest.raises(base.InvalidConfig, match="did not return a StorageBackend"):
        registry.get_backend("notabackend")


@pytest.mark.usefixtures("plugins")
def test_factory_failing_is_a_backend_error() -> None:
    with pytest.raises(base.BackendError, match="failed to start: no licence server") as caught:
        registry.get_backend("exploding")
    assert isinstance(caught.value.__cause__, RuntimeError)
