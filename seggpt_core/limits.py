"""Limits that callers without torch (the web process's settings) also need to know."""

DEFAULT_MAX_PIXELS = 150_000_000
"""Largest image area decoded, in pixels: larger than any camera frame or scan we expect, far below what would
exhaust a worker's memory (a decompression-bomb guard; SEGGPT_MAX_PIXELS lowers it)."""
