"""The controller's HTTP face: Connect RPCs, health and readiness (docs/decisions.md).

It serves the very gRPC handlers of :mod:`qvdc.api` (their ``__mapping__``) through
``connectrpc`` on uvicorn, so both faces share validation, limits, engines and error
messages; it sits above :mod:`qvdc.api` and below :mod:`qvdc.app`.
"""
