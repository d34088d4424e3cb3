"""Controller engines: heartbeat intake, liveness, aggregation, election, push, catalog."""
