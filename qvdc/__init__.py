"""QvDC: the Quantix storage-pool controller."""

__version__ = "0.1.0"
