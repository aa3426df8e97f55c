"""DPFM: training hardware for Dynamic Pruning in Forward Mode."""

__version__ = "0.1.0"
