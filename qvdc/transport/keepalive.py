"""The grpclib server's keepalive: a half-open host connection closes within a minute.

grpclib 0.4.9 takes keepalive settings only through ``Configuration`` fields it
marks experimental (their names start with an underscore), so they are set here
and nowhere else; ``tests/qvdc/transport/test_keepalive.py`` fails if grpclib
renames or drops them.
"""

from __future__ import annotations

import dataclasses

from grpclib.config import Configuration

#: The experimental ``Configuration`` fields this module sets.
FIELDS = (
    "_keepalive_time",
    "_keepalive_timeout",
    "_keepalive_permit_without_calls",
    "_http2_max_pings_without_data",
    "_http2_min_sent_ping_interval_without_data",
)


def server_configuration(*, keepalive_time: float, keepalive_timeout: float) -> Configuration:
    """Ping every connection, idle or not, every ``keepalive_time`` s; close it when a
    ping is not acknowledged within ``keepalive_timeout`` s."""
    return Configuration(
        _keepalive_time=keepalive_time,
        _keepalive_timeout=keepalive_timeout,
        # A node between two unary calls has no stream open: ping it all the same.
        _keepalive_permit_without_calls=True,
        # grpclib stops after 2 pings without data sent by default: never stop.
        _http2_max_pings_without_data=0,
        # grpclib skips a ping sooner than this after the last one (default 300 s).
        # Half the interval, so that a timer firing a little early still pings.
        _http2_min_sent_ping_interval_without_data=keepalive_time / 2,
    )


def configured_fields() -> frozenset[str]:
    """The names of grpclib's ``Configuration`` fields (for the contract test)."""
    return frozenset(f.name for f in dataclasses.fields(Configuration))
