"""The Quantix node daemon (``qvdc-node``): one per hypervisor host.

It registers the host with the controller, keeps one heartbeat stream open,
attaches and detaches the storage pools the controller assigns, and reports
what each pool actually looks like on this host. Start reading at
:mod:`node.app`, the composition root.
"""

__version__ = "0.1.0"
