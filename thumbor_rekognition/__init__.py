"""Image moderation for Thumbor: judge every original once, refuse rejected images everywhere."""

__version__ = "1.0.0"
