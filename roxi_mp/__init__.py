"""roxi-mp: background embedding and vector search for one machine (the core of ROXI)."""

__version__ = "0.1.0"
