"""Search spaces (docs/spaces.md is the YAML format), one job per module:

* ``checks``: collecting every problem with its key path (``SpaceError``);
* ``params``: the values of a space (fixed, int, float, categorical);
* ``schema``: the ``SearchSpace`` and its sections, sampling through an Optuna trial, the two stages;
* ``methods`` and ``load``: reading the YAML (a path or a bundled name);
* ``budget``: exact trainable-parameter counts, the budget and ``validate_space``.
"""

from .budget import SpaceReport, check_budget, count_methods, describe, validate_space
from .checks import SpaceError
from .load import BUNDLED_PACKAGE, bundled_spaces, load_space, space_from_dict
from .params import CategoricalParam, FixedParam, FloatParam, IntParam, Param
from .schema import (
    Budget,
    DataSpace,
    Fidelity,
    LayerGroup,
    MethodSpace,
    ModelSpace,
    PrunerSpec,
    SampledConfig,
    SamplerSpec,
    SearchSpace,
    Stage,
    stage1_settings,
)

__all__ = ["BUNDLED_PACKAGE", "Budget", "CategoricalParam", "DataSpace", "Fidelity", "FixedParam", "FloatParam",
           "IntParam", "LayerGroup", "MethodSpace", "ModelSpace", "Param", "PrunerSpec", "SampledConfig",
           "SamplerSpec", "SearchSpace", "SpaceError", "SpaceReport", "Stage", "bundled_spaces", "check_budget",
           "count_methods", "describe", "load_space", "space_from_dict", "stage1_settings", "validate_space"]
