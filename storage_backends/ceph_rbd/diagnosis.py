"""Dead or hung? A TCP connect to each monitor tells a stopped cluster from a silent one.

librados times out the same way for both. When a call is about to run out of time,
the backend asks :func:`check_monitors` (within the same bound) and words its
message from the verdicts; a healthy probe never pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from storage_backends import configs

#: A monitor silent for at least this many seconds at TCP level counts as
#: unreachable; a shorter silence is inconclusive.
MIN_SILENCE_EVIDENCE: Final = 0.25


@dataclass(frozen=True, slots=True)
class Reachability:
    """What a TCP connect to one monitor showed."""

    #: "accepts connections", "connection refused", "no TCP answer within 0.5s", ...
    verdict: str
    #: True: it accepted; False: it cannot be reached; None: inconclusive
    #: (no answer, but the check was too short to call it unreachable).
    reachable: bool | None


async def check_monitors(
    monitors: Sequence[configs.Monitor], *, timeout: float
) -> dict[configs.Monitor, Reachability]:
    """Connect to every monitor over TCP, concurrently, within ``timeout``.

    The connection is closed at once (the monitor sees a client that left
    before its banner). A monitor that does not answer within ``timeout``
    counts as unreachable only if ``timeout`` was at least
    :data:`MIN_SILENCE_EVIDENCE`: a shorter silence proves nothing on a slow
    network. Never raises but CancelledError.
    """

    async def check(monitor: configs.Monitor) -> Reachability:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(monitor.host, monitor.port)
        except TimeoutError:
            return Reachability(
                verdict=f"no TCP answer within {timeout:g}s",
                reachable=False if timeout >= MIN_SILENCE_EVIDENCE else None,
            )
        except ConnectionRefusedError:
            return Reachability(verdict="connection refused", reachable=False)
        except OSError as exc:  # no route to host, DNS failure, ...
            return Reachability(verdict=exc.strerror or str(exc), reachable=False)
        writer.close()
        with contextlib.suppress(OSError):  # includes TimeoutError
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
        return Reachability(verdict="accepts connections", reachable=True)

    results = await asyncio.gather(*(check(monitor) for monitor in monitors))
    return dict(zip(monitors, results, strict=True))


def reachability_detail(reachability: Mapping[configs.Monitor, Reachability]) -> str:
    """ "connection refused", or "a: connection refused; b: accepts connections"."""
    verdicts = {r.verdict for r in reachability.values()}
    if len(verdicts) == 1:
        return verdicts.pop()
    return "; ".join(f"{mon}: {r.verdict}" for mon, r in reachability.items())


def monitors_text(config: configs.CephRbdConfig, *, conf_path: Path | None) -> str:
    """``127.0.0.1:6789, 10.0.0.2:6789`` or where the monitors come from."""
    if config.monitors:
        return ", ".join(str(m) for m in config.monitors)
    return f"listed in {conf_path}" if conf_path is not None else "(none configured)"


def unreachable_message(
    config: configs.CephRbdConfig, *, seconds: float, conf_path: Path | None
) -> str:
    """The message for a cluster whose monitors did not answer within ``seconds``."""
    return (
        f"Ceph cluster unreachable: monitors {monitors_text(config, conf_path=conf_path)} "
        f"did not answer within {seconds:g}s"
    )
