"""lowrank-lens: train LLaMA-style models with full-rank and low-rank methods, then look beyond perplexity."""

__version__ = "0.1.0"
