"""nnd: a compiler and runtime for the .nnd neural-network model language."""

__version__ = "0.1.0"
