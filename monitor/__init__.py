"""Data-quality monitoring daemon for layered warehouse pipelines."""

__version__ = "0.1.0"
