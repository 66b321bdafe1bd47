"""Task families (a registry): ``vision`` (VTAB-1k and mini-VTAB on Vision Mamba) and ``language``
(LLM-Adapters commonsense files on a Mamba LM). ``family_of(space.data.kind)`` answers every question that
depends on the kind of data a space searches. A new family: one module with a ``TaskFamily`` subclass and one
line in the registration below (its order is the order ``data.kind`` values are listed in messages)."""

from .base import FAMILIES, TaskData, TaskFamily, data_kinds, family_of
from .language import LanguageFamily
from .vision import VisionFamily

for _family in (VisionFamily(), LanguageFamily()):
    FAMILIES.register(_family.name, _family)

__all__ = ["FAMILIES", "TaskData", "TaskFamily", "data_kinds", "family_of"]
