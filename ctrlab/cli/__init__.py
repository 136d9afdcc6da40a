"""The command layer (``ctrlab ...``): :func:`main` runs one command, :func:`build_parser` builds
the parser; one module per command family. Nothing else in ctrlab imports this package."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
