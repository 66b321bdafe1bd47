"""The budget report's per-method extremes: found by exact counts, whichever way a parameter moves the count."""

from __future__ import annotations

from hybridsearch.search import load_space, space_from_dict, validate_space
from hybridsearch.search.space.budget import count_methods


def test_extremes_of_a_method_whose_count_falls_as_a_parameter_grows() -> None:
    """sdt's freeze ratios shrink its count: the smallest setting has the highest ratios, the largest the lowest."""
    d = load_space("tiny_debug").to_dict()
    d["methods"] = {"sdt": {"optional": True, "params": {"warmup_steps": 2, "channel_freeze": {"float": [0.5, 0.99]},
                                                         "state_freeze": {"float": [0.0, 0.75]}}}}
    d.pop("budget", None)
    space = space_from_dict(d, source="s.yaml")
    report = validate_space(space)
    assert report.ok, report.errors
    lo = count_methods(space, {"sdt": {"warmup_steps": 2, "channel_freeze": 0.99, "state_freeze": 0.75}})["by_method"]
    hi = count_methods(space, {"sdt": {"warmup_steps": 2, "channel_freeze": 0.5, "state_freeze": 0.0}})["by_method"]
    assert lo["sdt"] < hi["sdt"]
    assert report.per_method["sdt"] == {"min": lo["sdt"], "max": hi["sdt"]}
    assert report.largest["methods"]["sdt"]["channel_freeze"] == 0.5
    assert report.largest["counts"]["by_method"]["sdt"] == hi["sdt"]
