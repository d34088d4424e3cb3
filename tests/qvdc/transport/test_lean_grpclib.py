"""The lean grpclib primitives behave as asyncio's, cost less, and carry real streams.

The controller-side tests run with them installed (``tests/conftest.py``); these
tests pin the asyncio semantics grpclib relies on (a property test runs the same
operations on ``asyncio.Queue`` and ``LeanQueue``), the memory they save, a real
stream whose messages exceed the HTTP/2 flow-control window (so that grpclib waits
on ``window_updated`` and its receive buffer holds several DATA chunks per message),
and the contract with grpclib: a scan of ``grpclib.protocol``'s source finds every
method and attribute it uses on the objects it builds from the replaced names, and
each must exist on the lean class.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import socket
import textwrap
import tracemalloc
from collections.abc import Callable
from typing import Any

import grpclib.const
import grpclib.protocol
import pytest
from grpclib.client import Channel
from grpclib.server import Server, Stream
from hypothesis import given
from hypothesis import strategies as st

from protos.limiquantix.compute import v1 as compute
from qvdc.transport import heartbeat_codec, lean_grpclib
from qvdc.transport.lean_grpclib import LeanDeque, LeanEvent, LeanQueue

# --- Event ---------------------------------------------------------------------------


async def test_event_wait_returns_at_once_when_set_and_blocks_after_clear() -> None:
    event = LeanEvent()
    assert not event.is_set()
    event.set()
    assert await asyncio.wait_for(event.wait(), 1)
    event.clear()
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    assert await asyncio.wait_for(waiter, 1) is True


async def test_event_set_wakes_every_waiter_and_a_cancelled_one_leaves_no_trace() -> None:
    event = LeanEvent()
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    assert event._waiters is not None and len(event._waiters) == 2
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters[1:]), 1) == [True, True]
    assert event._waiters == []


def test_event_has_no_waiter_list_until_something_waits() -> None:
    assert LeanEvent()._waiters is None
    assert not hasattr(LeanEvent(), "__dict__")


# --- Queue -----------------------------------------------------------------------------


async def test_queue_is_fifo_and_get_waits_for_a_put() -> None:
    queue: LeanQueue[int] = LeanQueue()
    assert queue.empty() and queue.qsize() == 0
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await asyncio.wait_for(getter, 1) == 1
    assert queue.qsize() == 1
    assert queue.get_nowait() == 2
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_woken_getter_cancelled_before_it_runs_hands_the_item_on() -> None:
    """asyncio.Queue's rule: an item put for a getter that is then cancelled is not lost,
    the next getter is woken for it."""
    queue: LeanQueue[str] = LeanQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("item")  # wakes `first`
    first.cancel()  # ... which is cancelled before it can take the item
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "item"
    assert queue.empty()


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 9)),
        st.tuples(st.just("get"), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 5)),
        st.tuples(st.just("spin"), st.just(0)),
    ),
    max_size=40,
)


async def _play(
    queue: asyncio.Queue[int] | LeanQueue[int], ops: list[tuple[str, int]]
) -> list[object]:
    """Run ``ops`` on ``queue``; the outcome of every get, in order of the gets."""
    getters: list[asyncio.Future[int]] = []
    for op, arg in ops:
        if op == "put":
            queue.put_nowait(arg)
        elif op == "get":
            getters.append(asyncio.ensure_future(queue.get()))
        elif op == "cancel" and arg < len(getters):
            getters[arg].cancel()
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    outcomes: list[object] = []
    for getter in getters:
        if not getter.done():
            getter.cancel()
        try:
            outcomes.append(await getter)
        except asyncio.CancelledError:
            outcomes.append("cancelled")
    outcomes.append(("left", queue.qsize()))
    return outcomes


@given(ops=OPS)
def test_queue_matches_asyncio_queue_on_any_sequence(ops: list[tuple[str, int]]) -> None:
    async def both() -> tuple[list[object], list[object]]:
        return await _play(asyncio.Queue(), ops), await _play(LeanQueue(), ops)

    reference, lean = asyncio.run(both())
    assert lean == reference


def test_deque_pops_from_the_left() -> None:
    chunks = LeanDeque()
    chunks.append("a")
    chunks.append("b")
    chunks[0] = "A"
    assert chunks.popleft() == "A"
    assert list(chunks) == ["b"]


# --- installing --------------------------------------------------------------------------


def _bytes_allocated(build: Callable[[], object], count: int = 1000) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [build() for _ in range(count)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) // count


def _in_grpclib(name: str) -> Any:
    return getattr(grpclib.protocol, name)


def test_grpclib_streams_use_them_and_hold_far_less() -> None:
    assert _in_grpclib("Event") is LeanEvent
    assert _in_grpclib("Queue") is LeanQueue

    def buffer_and_events() -> object:
        events = [_in_grpclib("Event")() for _ in range(3)]  # as a Stream has
        return events, grpclib.protocol.Buffer(lambda size: None)

    lean = _bytes_allocated(buffer_and_events)
    lean_grpclib.uninstall()
    try:
        stock = _bytes_allocated(buffer_and_events)
    finally:
        assert lean_grpclib.install()
    # measured: about 6,900 bytes stock, 700 lean
    assert lean * 4 < stock, (lean, stock)


def test_install_is_idempotent_and_refuses_a_changed_grpclib(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert lean_grpclib.install()
    assert lean_grpclib.install()
    original = _in_grpclib("Queue")
    lean_grpclib.uninstall()
    setattr(grpclib.protocol, "Queue", object)  # noqa: B010 - a grpclib that changed
    try:
        with caplog.at_level(logging.WARNING):
            assert not lean_grpclib.install()
        assert _in_grpclib("Event") is asyncio.Event  # nothing half-installed
        assert "keeping its own primitives" in caplog.text
    finally:
        setattr(grpclib.protocol, "Queue", asyncio.Queue)  # noqa: B010
        assert lean_grpclib.install()
        assert _in_grpclib("Queue") is original


# --- the contract with grpclib.protocol -----------------------------------------------


def _uses_of_replaced_names(source: str, names: set[str]) -> dict[str, set[str]]:
    """For each name in ``names``: what ``source`` does with the objects it builds from it.

    An object is recognised where it is built, ``<x>.<attr> = Name(...)``; each later
    ``<y>.<attr>.<member>`` is a use of ``member``, ``<y>.<attr>[...]`` of
    ``__getitem__``/``__setitem__``. Anything else - building one without storing it
    in an attribute, passing one along, iterating it, ``len()`` of it - is reported as
    ``<unrecognised ...>``, so that a new kind of use fails the contract instead of
    slipping past the scan.
    """
    tree = ast.parse(source)
    kind_of_attr: dict[str, str] = {}
    built: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            func = node.value.func
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(func, ast.Name) and func.id in names and len(targets) == 1:
                target = targets[0]
                if isinstance(target, ast.Attribute):
                    kind_of_attr[target.attr] = func.id
                    built.add(id(node.value))
    uses: dict[str, set[str]] = {name: set() for name in names}
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in names
            and id(node) not in built
        ):
            uses[node.func.id].add(f"<unrecognised: built at line {node.lineno}>")
        if not (isinstance(node, ast.Attribute) and node.attr in kind_of_attr):
            continue
        kind = kind_of_attr[node.attr]
        parent = parents.get(id(node))
        if isinstance(parent, ast.Attribute) and parent.value is node:
            uses[kind].add(parent.attr)
        elif isinstance(parent, ast.Subscript) and parent.value is node:
            uses[kind].add("__setitem__" if isinstance(parent.ctx, ast.Store) else "__getitem__")
        elif isinstance(parent, ast.Assign | ast.AnnAssign) and id(parent.value) in built:
            pass  # where it is built
        else:
            uses[kind].add(f"<unrecognised: {type(parent).__name__} at line {node.lineno}>")
    return uses


def _missing(uses: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        name: {member for member in members if not hasattr(lean_grpclib.LEAN[name], member)}
        for name, members in uses.items()
    }


def test_every_use_grpclib_protocol_makes_of_the_replaced_names_is_covered() -> None:
    uses = _uses_of_replaced_names(inspect.getsource(grpclib.protocol), set(lean_grpclib.LEAN))
    # The scan sees what grpclib 0.4.9 does (so the scan itself is not blind) ...
    assert {"set", "clear", "wait", "is_set"} <= uses["Event"]
    assert {"put_nowait", "get", "get_nowait", "empty", "qsize"} <= uses["Queue"]
    assert {"append", "popleft", "__getitem__", "__setitem__"} <= uses["deque"]
    # ... and every use has its counterpart in the lean classes.
    assert _missing(uses) == {name: set() for name in uses}


def test_the_usage_scan_reports_what_the_lean_classes_lack() -> None:
    """A grpclib that calls a method the lean class lacks, or uses one in a way the scan
    does not know, fails the contract above."""
    source = textwrap.dedent(
        """
        class Stream:
            def __init__(self):
                self.ready = Event()
                self.chunks = deque()

            async def go(self):
                await self.ready.wait()
                self.ready.wait_for_nothing()
                for chunk in self.chunks:
                    pass
                consume(Queue())
        """
    )
    missing = _missing(_uses_of_replaced_names(source, {"Event", "Queue", "deque"}))
    assert missing["Event"] == {"wait_for_nothing"}
    assert missing["deque"] == {"<unrecognised: For at line 10>"}
    assert missing["Queue"] == {"<unrecognised: built at line 12>"}


def test_the_replaced_names_are_asyncio_s_in_stock_grpclib() -> None:
    """install() swaps only names that are still the originals it was written against."""
    lean_grpclib.uninstall()
    try:
        assert not lean_grpclib.installed()
        for name, original in lean_grpclib.ORIGINALS.items():
            assert _in_grpclib(name) is original
    finally:
        assert lean_grpclib.install()
    assert lean_grpclib.installed()


# --- a real stream through them ---------------------------------------------------------------


class _Echo:
    """Echoes every heartbeat's node id back as the response's pool ids."""

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/limiquantix.compute.v1.NodeService/StreamHeartbeat": grpclib.const.Handler(
                self.echo,
                grpclib.const.Cardinality.STREAM_STREAM,
                compute.UpdateHeartbeatRequest,
                compute.UpdateHeartbeatResponse,
            )
        }

    async def echo(
        self, stream: Stream[compute.UpdateHeartbeatRequest, compute.UpdateHeartbeatResponse]
    ) -> None:
        async for request in stream:
            await stream.send_message(
                compute.UpdateHeartbeatResponse(
                    sequence=request.sequence, assigned_pool_ids=[request.node_id]
                )
            )


async def test_messages_larger_than_the_flow_control_window_cross_a_real_stream() -> None:
    server = Server([_Echo()], codec=heartbeat_codec.server_codec())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await server.start(sock=sock)
    channel = Channel("127.0.0.1", port, codec=heartbeat_codec.server_codec())
    big = "x" * 300_000  # several times HTTP/2's default 64 KiB window, both ways
    try:
        async with channel.request(
            "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
            timeout=30,
        ) as call:
            for sequence in range(1, 4):
                await call.send_message(
                    compute.UpdateHeartbeatRequest(node_id=f"{sequence}{big}", sequence=sequence)
                )
                reply = await asyncio.wait_for(call.recv_message(), 10)
                assert reply is not None
                assert reply.sequence == sequence
                assert reply.assigned_pool_ids == [f"{sequence}{big}"]
            await call.end()
            assert await asyncio.wait_for(call.recv_message(), 10) is None
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
