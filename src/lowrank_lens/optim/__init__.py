"""Optimizers and their pure tensor pieces: GaLore's SVD projector, GaLoreAdamW, FiraAdamW (docs/methods.md §2-3)."""

from .fira_adamw import FiraAdamW
from .galore_adamw import GaLoreAdamW

__all__ = ["FiraAdamW", "GaLoreAdamW"]
