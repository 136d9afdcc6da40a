"""ctrlab: a click-through-rate prediction toolkit."""

__version__ = "0.1.0"
