"""Benchmarks of the Quantix control plane (run from the repository root)."""
