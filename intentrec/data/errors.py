"""The one exception type for bad input data, so the CLI can print it as a single line."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or a bad dataset description; the message names file, column and counts."""
