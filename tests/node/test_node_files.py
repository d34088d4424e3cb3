"""node.files: listing a pool's directory for ListPoolFiles, on a real directory tree.

The traversal refusals are a table (``..``, absolute paths, symlinks out of the root,
a symlinked root); entries, order and pages are checked against what the tree holds.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from node import files
from node.files import Code, ListingError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A pool root with directories, files of several types, and symlinks in and out."""
    pool = tmp_path / "pool"
    (pool / "images" / "nested").mkdir(parents=True)
    (pool / "Beta").mkdir()
    (pool / "b.QCOW2").write_bytes(b"x" * 1000)
    (pool / "a.iso").write_bytes(b"y" * 10)
    (pool / "README").write_text("hi")
    (pool / "images" / "disk.raw").write_bytes(b"z" * 3)
    os.chmod(pool / "a.iso", 0o640)
    os.utime(pool / "a.iso", (1_700_000_000, 1_700_000_000))
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwd").write_text("root")
    (pool / "out").symlink_to(outside)
    (pool / "inside").symlink_to(pool / "images")
    (pool / "images" / "up").symlink_to(tmp_path)
    return pool


def _names(listing: files.Listing) -> list[str]:
    return [e.name for e in listing.entries]


def test_root_listing_directories_first_then_names_case_insensitively(root: Path) -> None:
    listing = files.list_directory(str(root), "")
    # Symlinks are listed as themselves (not followed), so they sort with the files.
    assert _names(listing) == ["Beta", "images", "a.iso", "b.QCOW2", "inside", "out", "README"]
    assert listing.current_path == ""
    assert listing.more is False
    by_name = {e.name: e for e in listing.entries}
    iso = by_name["a.iso"]
    assert (iso.path, iso.is_directory, iso.size_bytes) == ("a.iso", False, 10)
    assert (iso.file_type, iso.permissions) == ("iso", "640")
    assert iso.modified_at == "2023-11-14T22:13:20Z"
    assert by_name["b.QCOW2"].file_type == "qcow2"
    assert by_name["README"].file_type == "readme"  # no dot: the whole name, lower-cased
    assert (by_name["images"].is_directory, by_name["images"].file_type) == (True, "directory")


@pytest.mark.parametrize("path", ["images", "/images", "images/", "//images//", "./images"])
def test_a_subdirectory_by_any_spelling(root: Path, path: str) -> None:
    listing = files.list_directory(str(root), path)
    assert listing.current_path == "images"
    assert [(e.name, e.path) for e in listing.entries] == [
        ("nested", "images/nested"),
        ("disk.raw", "images/disk.raw"),
        ("up", "images/up"),
    ]


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("..", Code.INVALID_ARGUMENT, "path: contains '..'"),
        ("../secret", Code.INVALID_ARGUMENT, "path: contains '..'"),
        ("images/../../secret", Code.INVALID_ARGUMENT, "path: contains '..'"),
        ("/..", Code.INVALID_ARGUMENT, "path: contains '..'"),
        ("a\x00b", Code.INVALID_ARGUMENT, "path: contains a NUL character"),
        # Absolute paths name the pool's own tree, never the host's.
        ("/etc", Code.NOT_FOUND, "path: etc does not exist in the pool"),
        ("/secret/passwd", Code.NOT_FOUND, "path: secret/passwd does not exist in the pool"),
        # Symlinks out of the root, directly and from a subdirectory.
        ("out", Code.INVALID_ARGUMENT, "path: is outside the pool root"),
        ("images/up", Code.INVALID_ARGUMENT, "path: is outside the pool root"),
        ("images/up/secret", Code.INVALID_ARGUMENT, "path: is outside the pool root"),
        ("missing", Code.NOT_FOUND, "path: missing does not exist in the pool"),
        ("a.iso", Code.FAILED_PRECONDITION, "path: a.iso is a file, not a directory"),
    ],
)
def test_refusals(root: Path, path: str, code: Code, message: str) -> None:
    with pytest.raises(ListingError) as caught:
        files.list_directory(str(root), path)
    assert (caught.value.code, str(caught.value)) == (code, message)


def test_a_symlink_inside_the_root_is_followed(root: Path) -> None:
    listing = files.list_directory(str(root), "inside")
    assert _names(listing) == ["nested", "disk.raw", "up"]
    assert listing.entries[0].path == "inside/nested"


def test_a_root_that_is_itself_a_symlink_is_canonicalised(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "pool-link"
    link.symlink_to(root)
    assert "images" in _names(files.list_directory(str(link), ""))
    with pytest.raises(ListingError) as caught:
        files.list_directory(str(link), "out")
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_a_missing_root_is_a_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(ListingError) as caught:
        files.list_directory(str(tmp_path / "gone"), "")
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert "is not accessible" in str(caught.value)


def test_pages_cover_the_listing_once_in_order(root: Path) -> None:
    everything = _names(files.list_directory(str(root), ""))
    seen: list[str] = []
    after: tuple[bool, str] | None = None
    while True:
        page = files.list_directory(str(root), "", after=after, limit=2)
        assert len(page.entries) <= 2
        seen += _names(page)
        if not page.more:
            break
        last = page.entries[-1]
        after = (last.is_directory, last.name)
    assert seen == everything


def test_a_page_continues_after_its_cursor_when_entries_come_and_go(root: Path) -> None:
    first = files.list_directory(str(root), "", limit=3)
    assert _names(first) == ["Beta", "images", "a.iso"]
    (root / "0-new-first").write_text("")  # sorts before the cursor: not seen again
    (root / "a.iso").unlink()  # the cursor entry itself is gone
    last = first.entries[-1]
    rest = files.list_directory(str(root), "", after=(last.is_directory, last.name), limit=50)
    assert _names(rest) == ["b.QCOW2", "inside", "out", "README"]


def test_the_limit_is_bounded(root: Path) -> None:
    for i in range(files.MAX_LIMIT + 5):
        (root / "images" / f"f{i:04}").write_text("")
    page = files.list_directory(str(root), "images", limit=10**6)
    assert len(page.entries) == files.MAX_LIMIT
    assert page.more is True
    assert len(files.list_directory(str(root), "images", limit=0).entries) == 1


def test_a_directory_over_the_scan_cap_is_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_SCAN", 3)
    with pytest.raises(ListingError) as caught:
        files.list_directory(str(root), "")
    assert caught.value.code is Code.RESOURCE_EXHAUSTED
    assert "more than 3 entries" in str(caught.value)


async def test_the_lister_refuses_a_pool_without_a_mount_path() -> None:
    lister = files.FileLister()
    with pytest.raises(ListingError) as caught:
        await lister.list(pool_id="rbd-1", mount_path="", path="", after=None, limit=10)
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert "pool rbd-1 has no mount path" in str(caught.value)


async def test_the_lister_refuses_traversal_before_starting_a_thread(root: Path) -> None:
    lister = files.FileLister()
    before = threading.active_count()
    with pytest.raises(ListingError) as caught:
        await lister.list(pool_id="p", mount_path=str(root), path="../x", after=None, limit=10)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert threading.active_count() == before


async def test_a_hung_listing_is_bounded_and_the_next_is_told_busy(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = files.list_directory

    def hung(*args: object, **kwargs: object) -> files.Listing:
        release.wait(10)  # a filesystem that does not answer
        return real(str(root), "")

    monkeypatch.setattr(files, "list_directory", hung)
    lister = files.FileLister(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ListingError) as caught:
        await lister.list(pool_id="p", mount_path=str(root), path="", after=None, limit=10)
    assert caught.value.code is Code.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    with pytest.raises(ListingError) as busy:
        await lister.list(pool_id="p", mount_path=str(root), path="", after=None, limit=10)
    assert busy.value.code is Code.UNAVAILABLE
    assert "still running" in str(busy.value)
    release.set()
    for _ in range(100):  # the stuck worker returns: the pool can be listed again
        try:
            got = await lister.list(
                pool_id="p", mount_path=str(root), path="", after=None, limit=10
            )
        except ListingError:
            await asyncio.sleep(0.05)
            continue
        assert "images" in _names(got)
        break
    else:
        pytest.fail("the pool never became listable again")
