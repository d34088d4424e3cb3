"""etcd access: the only package that talks to etcd.

``store.etcd`` is the only module that imports the etcd client.
"""
