"""Every MambaPEFT method and the state-space methods published since, composable into hybrids (see hybrid.py
for the YAML format).

One folder per method family (``lora/``, ``tokens/``, ``additional_scan/``, ``partial/``, ``sdt/``, ``state/``:
config.py, layer.py and the attach functions with their registration in ``__init__.py``). Importing a family
registers its methods, and registration order is the canonical order a hybrid is applied and exported in:
parallel_adapter, lora_embed, the mixer LoRAs, prompt, affix, additional_scan, the tune_* methods, sdt,
state_offset, output_offset, init_state. So the families are imported first and in this order (kept out of
isort's reach). ``lifecycle.py``: the warm-up hooks training loops call.
"""

# isort: off
from . import lora, tokens, additional_scan, partial, sdt, state  # noqa: F401  (registration, in canonical order)
# isort: on

from .apply import apply_peft, method_of, param_groups
from .config import MethodConfig, layer_ranges, parse_layers
from .counting import count_config, count_parameters
from .hybrid import PeftConfig
from .io import ADAPTER_FILE, CONFIG_FILE, META_FILE, load_adapters, save_adapters, trainable_state_dict
from .lifecycle import after_optimizer_step, end_warmup, in_warmup
from .merge import merge_peft, unmergeable
from .registry import METHODS, MethodSpec

__all__ = ["ADAPTER_FILE", "CONFIG_FILE", "METHODS", "META_FILE", "MethodConfig", "MethodSpec", "PeftConfig",
           "after_optimizer_step", "apply_peft", "count_config", "count_parameters", "end_warmup", "in_warmup",
           "layer_ranges", "load_adapters", "merge_peft", "method_of", "param_groups", "parse_layers",
           "save_adapters", "trainable_state_dict", "unmergeable"]
