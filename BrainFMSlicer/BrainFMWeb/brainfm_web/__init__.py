"""BrainFM Web."""
__version__ = "0.1.0"
