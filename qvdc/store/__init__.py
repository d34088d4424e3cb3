"""etcd access: the only package that talks to etcd.

``store.etcd`` is the only package that imports the etcd client; ``store.records``
holds the values its API takes and returns.
"""
