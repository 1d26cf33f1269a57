"""Package version, recorded in every persisted artifact."""

__version__ = "0.1.0"
