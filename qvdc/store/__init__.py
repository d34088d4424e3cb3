"""etcd access: the only package that talks to etcd (and `store.etcd` the only module importing the client)."""
