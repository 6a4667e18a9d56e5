"""The package's version, in a module of its own so that any layer can read it without
importing the library's front door."""

__version__ = "0.1.0"
