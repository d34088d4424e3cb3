"""The keepalive settings reach grpclib through fields it calls experimental: if grpclib
renames or drops one, or stops reading it where the pings are decided, these fail."""

from __future__ import annotations

import inspect

import grpclib.protocol

from qvdc.transport import keepalive


def test_every_field_set_exists_in_grpclib_configuration() -> None:
    assert set(keepalive.FIELDS) <= keepalive.configured_fields()


def test_grpclib_reads_every_field_where_it_decides_on_pings() -> None:
    source = inspect.getsource(grpclib.protocol)
    missing = [name for name in keepalive.FIELDS if f"_config.{name}" not in source]
    assert missing == []


def test_the_configuration_carries_the_settings() -> None:
    config = keepalive.server_configuration(keepalive_time=30.0, keepalive_timeout=20.0)
    assert config._keepalive_time == 30.0
    assert config._keepalive_timeout == 20.0
    assert config._keepalive_permit_without_calls is True
    assert config._http2_max_pings_without_data == 0
    assert config._http2_min_sent_ping_interval_without_data == 15.0
