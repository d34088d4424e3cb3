"""Leaf async helpers (backoff, interruptible sleep, guarded tasks). Stdlib only; the node daemon may import them."""
