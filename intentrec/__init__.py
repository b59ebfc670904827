"""IntentRec: intent-aware sequential recommendation on Lightning.

``from intentrec import load_model`` rebuilds a trained checkpoint for recommendations and
intents (:mod:`intentrec.recommend`); it is imported on first use, so ``import intentrec``
stays light (no torch).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from intentrec.recommend import load_model

        return load_model
    raise AttributeError(f"module 'intentrec' has no attribute {name!r}")
