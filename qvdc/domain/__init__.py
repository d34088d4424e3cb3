"""Pure domain rules: no asyncio, no etcd, no protobuf. Functions of their inputs and `now`."""
