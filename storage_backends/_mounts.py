"""``/proc/self/mountinfo``, parsed once for every backend that checks mounts.

Backends stay independent of each other (import-linter), so what they share
lives in private modules like this one and ``_exec``. Each backend keeps its
own small ``Mount`` view of the fields it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MOUNTINFO: Final = "/proc/self/mountinfo"
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo (see proc(5)), the fields backends use."""

    mount_point: str
    #: The directory of the mounted filesystem that appears at the mount point.
    root: str
    major_minor: str
    fstype: str
    source: str


def read_text(mountinfo: str = MOUNTINFO) -> str:
    """The file's text ("" when it does not exist)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def parse(text: str) -> list[MountEntry]:
    """Parse mountinfo text; returns mounts in file order (later lines mount on
    top). Malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_point=unescape(fields[4]),
                    root=unescape(fields[3]),
                    major_minor=fields[2],
                    fstype=fields[sep + 1],
                    source=unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def unescape(field: str) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` space, ``\011`` tab, ``\012``, ``\134``)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)
