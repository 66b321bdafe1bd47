"""Deploying a searched hybrid, in one place:

* ``winner``: a study's winner as ``peft.yaml`` + ``meta.json`` (``--retrain``: full fidelity, test once,
  adapters and the merged model) — ``hybridsearch export``;
* ``bundle``: saved adapters on a base checkpoint, merged or not, written in the base's own format —
  ``hybridsearch apply``;
* ``hf_peft``: a Hugging Face PEFT LoRA adapter plus the base it loads on (what PEFT cannot express merged into
  it) — ``hybridsearch apply --hf-peft``.
"""

from .bundle import apply_adapters, base_format, load_model, read_adapter_meta, write_model
from .hf_peft import export_hf_peft
from .winner import export_winner

__all__ = ["apply_adapters", "base_format", "export_hf_peft", "export_winner", "load_model", "read_adapter_meta",
           "write_model"]
