"""Leaf helpers shared by the controller and the node daemon.

``backoff`` (capped, jittered retry delays), ``timing`` (clocks and an
interruptible sleep), ``tasks`` (supervised background tasks), ``materiality``
(when a pool report changed enough to write or send), ``nested`` (indexes of
small sets or tables that hold no empty entries).

Standard library only and nothing else of qvdc, lazy imports included: the
import-linter contract in pyproject.toml and tests/qvdc/kits/test_kits_leaf.py
enforce it. Tricks that depend on a library's internals live in
:mod:`qvdc.transport`; process tuning in :mod:`qvdc.runtime`.
"""
