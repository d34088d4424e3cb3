"""Who may talk to the controller: certificates (:mod:`qvdc.security.certs`) and the
identities read from them.

This package imports nothing of qvdc but :mod:`qvdc.kits` and :mod:`qvdc.domain`, so
the app, the API and qvdcctl may all use it. docs/security.md describes the whole.
"""
