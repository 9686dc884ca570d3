"""The package version, in a module of its own so the typed client can read it without the package's
``__init__`` (whose lazy names lead to the server)."""

__version__ = "0.1.0"
