"""Image moderation for Thumbor: judge every original once, refuse rejected images everywhere."""

__version__ = "0.1.0"
