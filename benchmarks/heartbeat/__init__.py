"""Heartbeat-throughput benchmark harness: ``python -m benchmarks.heartbeat --help``."""
