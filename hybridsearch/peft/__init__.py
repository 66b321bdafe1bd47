"""Every MambaPEFT method, composable into hybrids (see config.py for the YAML format)."""

from .api import (
    apply_peft,
    count_config,
    count_parameters,
    load_adapters,
    merge_peft,
    param_groups,
    save_adapters,
)
from .config import PeftConfig
from .methods import METHODS

__all__ = ["METHODS", "PeftConfig", "apply_peft", "count_config", "count_parameters", "load_adapters",
           "merge_peft", "param_groups", "save_adapters"]
