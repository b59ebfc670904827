"""IntentRec: intent-aware sequential recommendation on Lightning."""

__version__ = "0.1.0"
