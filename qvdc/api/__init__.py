"""grpclib services: validation, conversion between wire and domain types, error mapping."""
