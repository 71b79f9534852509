from .llama import build_model, count_parameters, llama_config

__all__ = ["build_model", "count_parameters", "llama_config"]
