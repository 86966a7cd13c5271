"""``saten.target_ratio``: the global budget hits the requested targeted ratio within 1 % (relative)."""

import copy

import pytest
from conftest import load_model_cfg

from saten import compress, model_report
from saten.config import SatenConfig
from saten.errors import ConfigError
from saten.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model(load_model_cfg("tiny_bert"), num_labels=2)


@pytest.mark.parametrize("cfg", [
    {"method": "saten", "eps": 0.85, "density": 0.1},
    {"method": "tt", "eps": 0.6},
])
def test_target_ratio_is_hit_within_one_percent(tiny, cfg):
    model = copy.deepcopy(tiny)
    replaced = compress(model, cfg | {"target_ratio": 0.33})
    report = model_report(model, replaced)
    assert report["total"]["ratio"] == pytest.approx(0.33, rel=0.01)
    budget = model.saten_info["budget"]
    # the report shows what was chosen: the chosen eps (and density), not the configured ones
    assert report["eps"] == budget["eps"] and budget["ratio"] == pytest.approx(report["total"]["ratio"])
    if cfg["method"] == "saten":
        assert report["density"] == budget["density"] >= 0.1


def test_smaller_target_needs_larger_eps(tiny):
    chosen = []
    for target in (0.5, 0.33):
        model = copy.deepcopy(tiny)
        compress(model, {"method": "saten", "eps": 0.5, "density": 0.05, "target_ratio": target})
        chosen.append(model.saten_info["budget"]["eps"])
    assert chosen[0] < chosen[1]


def test_unreachable_target_is_one_clear_error(tiny):
    with pytest.raises(ConfigError, match=r"saten.target_ratio=0.05: below .*lower saten.density"):
        compress(copy.deepcopy(tiny), {"method": "saten", "density": 0.2, "target_ratio": 0.05})


@pytest.mark.parametrize("value", [0, 1.5, -0.2])
def test_target_ratio_must_lie_in_0_1(value):
    with pytest.raises(ConfigError, match=rf"saten.target_ratio={value}: invalid; use a ratio in \(0, 1\]"):
        SatenConfig.from_any({"method": "saten", "target_ratio": value})


def test_target_ratio_is_dropped_for_svd():
    assert SatenConfig.from_any({"method": "svd", "svd_ratio": 0.3, "target_ratio": 0.3}).target_ratio is None
