"""hybridsearch: hybrid parameter-efficient fine-tuning search for Mamba and Vision Mamba."""

from ._version import __version__
from .models import MODELS, create_model
from .peft import (
    METHODS,
    PeftConfig,
    apply_peft,
    count_config,
    count_parameters,
    load_adapters,
    merge_peft,
    param_groups,
    save_adapters,
)

# the search imports Optuna and the task families: loaded on first use, so `import hybridsearch` stays light
_LAZY = {"run_search": "search", "resume_search": "search", "load_space": "search", "export_winner": "deploy"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hybridsearch' has no attribute {name!r}")


__all__ = ["METHODS", "MODELS", "PeftConfig", "__version__", "apply_peft", "count_config", "count_parameters",
           "create_model", "export_winner", "load_adapters", "load_space", "merge_peft", "param_groups",
           "resume_search", "run_search", "save_adapters"]
