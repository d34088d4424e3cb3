"""Where qvdc and the node daemon depend on private internals of grpclib and betterproto2.

Each speed trick or workaround that relies on something a library does not
promise lives here, behind a public function, with a contract test that fails
when the library changes under it (tests/qvdc/transport):

* :mod:`qvdc.transport.heartbeat_codec` - the controller's gRPC codec, with the
  heartbeat messages (de)serialised by hand (betterproto2's message layout and
  ``_unknown_fields``);
* :mod:`qvdc.transport.wire` - protobuf varints, the one home of their reading and
  writing, and the strict check of request bytes (betterproto2's class metadata);
* :mod:`qvdc.transport.bounds` - the server's message reader: size checked at the
  prefix, malformed bytes INVALID_ARGUMENT (``grpclib.stream.recv_message``);
* :mod:`qvdc.transport.serving` - the controller's server: idle connections closed,
  oversized frames refused at their header, unknown frames ignored (grpclib's
  protocol factory and h2's frame buffer);
* :mod:`qvdc.transport.errors` - refusals logged as one rate-limited line;
* :mod:`qvdc.transport.lean_grpclib` - smaller per-stream primitives swapped into
  ``grpclib.protocol`` (installed by :mod:`qvdc.runtime`, never by the node);
* :mod:`qvdc.transport.streams` - opening a client stream that is only ever reset,
  and reading the status a refusing server sent (``Stream._maybe_raise``).

Import-linter keeps ``grpclib.protocol``, ``grpclib.stream``, ``grpclib.encoding`` and
grpclib's other internals out of every other package. This package imports only
grpclib, h2, betterproto2 (and its messages, ``protos``) and :mod:`qvdc.kits`, so the
node daemon may use it.
"""
