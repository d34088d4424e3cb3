"""Long-running controller engines: heartbeat intake, liveness monitor, aggregator, assignment push."""
