"""Leaf helpers (backoff, timing, guarded tasks, materiality).

Standard library only, so the node daemon may import them too.
"""
