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

__all__ = ["METHODS", "MODELS", "PeftConfig", "__version__", "apply_peft", "count_config", "count_parameters",
           "create_model", "load_adapters", "merge_peft", "param_groups", "save_adapters"]
