"""tune_process: what a replica's process sets before it starts, and nothing else."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from qvdc import runtime
from qvdc.runtime import collector
from qvdc.transport import lean_grpclib


@pytest.fixture
def process_state() -> Iterator[None]:
    """Put the collector back as the test session had it."""
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks
        gc.unfreeze()


def test_tune_process_sets_the_collector_and_the_lean_primitives(process_state: None) -> None:
    lean_grpclib.uninstall()
    try:
        runtime.tune_process()
        assert gc.get_threshold() == (50_000, 20, 10)
        policies = [
            cb
            for cb in gc.callbacks
            if isinstance(getattr(cb, "__self__", None), collector.CollectorPolicy)
        ]
        assert len(policies) == 1
        assert lean_grpclib.installed()
    finally:
        assert lean_grpclib.install()


def test_importing_qvdc_changes_no_process_state() -> None:
    """Only tune_process does: the modules the node daemon and the tests import do not."""
    code = (
        "import asyncio, gc, grpclib.protocol\n"
        "before = gc.get_threshold(), list(gc.callbacks)\n"
        "import qvdc.app, qvdc.runtime, node.app\n"
        "assert (gc.get_threshold(), gc.callbacks) == before, gc.callbacks\n"
        "assert grpclib.protocol.Event is asyncio.Event\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
