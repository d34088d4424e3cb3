"""How big anything a client sends may be: one frozen value, checked at the API edge.

Every string, repeated field and stored document the controller accepts has a bound here,
so no client can make a request, a reply, a log line or an etcd document grow without limit
(docs/configuration.md, "Limits", lists each with its default and the status past it).
A value over its bound is refused with ``InvalidArgument`` naming the field and the bound;
the refusal quotes at most :data:`ECHO_MAX` characters of what was sent (:func:`quote`).

The transport's own bounds (message size read before the body, idle connections) are
``GrpcSettings`` fields: they act before any message is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Characters of a client's value an error message may quote; the rest is elided.
ECHO_MAX = 64


def quote(value: object, *, limit: int = ECHO_MAX) -> str:
    """``repr``-style quotation of ``value`` cut to ``limit`` characters, with the length.

    ``quote("abc")`` -> ``'abc'``; a 1 MiB string -> ``'aaaa…' (1048576 characters)``, so a
    message quoting client input stays small whatever the input.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


#: Entries the request decoders read in one repeated field before refusing the request
#: (``qvdc.transport.wire.MAX_ENTRIES``, which the transport may not import from here;
#: a test holds the two equal). A count limit above it could never be reached.
DECODER_MAX_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on client input. Lengths are in characters, sizes in bytes."""

    max_id_length: int = 128
    """Ids a client names (pool_id, node_id, project_id, volume ids): 128 characters.
    The controller's own ids are 36-character UUIDs."""

    max_hostname_length: int = 253
    """Host names (RFC 1123 allows 253)."""

    max_text_length: int = 1024
    """Free text an operator or node writes: descriptions, disable reasons, condition
    messages."""

    max_report_message_length: int = 4096
    """A host's ``error_message`` for one pool (what an operator reads in the pool view)."""

    max_path_length: int = 4096
    """Paths (mount paths, directories): Linux's PATH_MAX."""

    max_labels: int = 64
    """Labels on one pool or node."""

    max_reports_per_heartbeat: int = 1024
    """Pool reports in one heartbeat: far above any host's pool count."""

    max_repeated: int = 1024
    """Any other repeated field of a request (devices, interfaces, assigned nodes, ids)."""

    max_pool_document_bytes: int = 64 * 1024
    """A pool's stored document in etcd, 64 KiB."""

    max_node_document_bytes: int = 256 * 1024
    """A node's stored document in etcd, 256 KiB (hardware inventories are large)."""

    max_watch_streams: int = 256
    """Watch streams (WatchNode, WatchNodes, WatchPools, gRPC and Connect together) open
    at once on one replica; one more is refused with RESOURCE_EXHAUSTED."""

    max_watch_backlog: int = 1024
    """Changed nodes or pools one watch stream may have waiting to be sent (several
    changes of one are one entry: it is sent as it is then). A client further behind
    has its stream ended with RESOURCE_EXHAUSTED ("watch fell behind; re-watch")."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")
        for name in ("max_reports_per_heartbeat", "max_repeated", "max_labels"):
            if getattr(self, name) > DECODER_MAX_ENTRIES:
                raise ValueError(
                    f"limit {name} must be at most {DECODER_MAX_ENTRIES} (the request "
                    f"decoders read no more entries of a field), got {getattr(self, name)}"
                )
