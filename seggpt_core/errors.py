"""Exceptions raised at the boundaries of seggpt_core. All are ValueErrors with a message that says what and where."""

__all__ = ["SegGptError", "WeightsError", "ImageError", "PromptError"]


class SegGptError(ValueError):
    """Base class of every error this package raises on bad input."""


class WeightsError(SegGptError):
    """A checkpoint or config that cannot be loaded: missing files, wrong keys or shapes."""


class ImageError(SegGptError):
    """An image that cannot be used: unreadable, truncated, empty, zero-area or too large."""


class PromptError(SegGptError):
    """A prompt set that cannot be used: no prompts, no labels, or masks that do not fit their image."""
