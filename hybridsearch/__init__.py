"""hybridsearch: hybrid parameter-efficient fine-tuning search for Mamba and Vision Mamba."""

from pathlib import Path as _Path

# The owner's layout keeps kernels/ (and search_spaces/) beside this package; an install maps them to
# hybridsearch.kernels (pyproject's package-dir). Imported straight from a source checkout (no install, or the
# checkout shadowing a non-editable one), the same mapping holds by looking for subpackages there too.
_ROOT = _Path(__file__).resolve().parent.parent
if not (_ROOT / "hybridsearch" / "kernels").exists() and (_ROOT / "kernels" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # noqa: F821 (the package's own __path__)

from ._version import __version__  # noqa: E402
from .models import MODELS, create_model  # noqa: E402
from .peft import (  # noqa: E402
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
