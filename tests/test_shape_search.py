"""The training-free TT-shape proxy: ranks a known-better shape first, writes tables, plot and configs."""

import copy
import csv
import re

import torch
from conftest import load_model_cfg
from omegaconf import OmegaConf
from torch import nn

from saten import compress, model_report
from saten.models import load_model
from saten.shape_search import candidates, layer_types, main, score, search
from saten.tt import TTShape

GRID = (0.01, 0.1, 0.5, 0.85, 1.0)  # down to the noise level of the synthetic matrices


def kronecker_matrix(seed: int = 0) -> torch.Tensor:
    """64x64 sum of two Kronecker products + small noise: TT-matrix rank 2 in the (8x8)x(8x8) layout, but
    full rank (64) as a plain [8, 8, 8, 8] tensor's middle unfolding."""
    g = torch.Generator().manual_seed(seed)
    w = sum(torch.kron(torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)) for _ in range(2))
    return w + 1e-3 * torch.randn(64, 64, generator=g)


def test_proxy_ranks_the_true_structure_first():
    a = kronecker_matrix()
    budget = 300  # parameters: enough for rank-2 TT-matrix cores (2*(64+64)), far too few for plain
    good, _ = score(a, TTShape((8, 8), (8, 8), "matrix"), budget, GRID)
    bad, _ = score(a, TTShape((8, 8), (8, 8), "plain"), budget, GRID)
    assert good < 0.05 < 0.5 < bad


def test_search_on_layers_puts_the_matching_shape_on_top():
    model = nn.ModuleDict({"layer": nn.ModuleList([nn.ModuleDict({"dense": nn.Linear(64, 64)})
                                                   for _ in range(2)])})
    for k, block in enumerate(model["layer"]):
        block["dense"].weight.data = kronecker_matrix(k).T.contiguous()  # A = Wᵀ is the Kronecker matrix
    rows, points = search(model, ["layer.0.dense", "layer.1.dense"], layers_per_type=0, eps_grid=GRID)
    best = rows[0]  # (8x8)x(8x8), or its refinement (8x8)x(4x4)x(2x2): both keep the Kronecker split
    assert (best["layout"], best["in_factors"][0], best["out_factors"][0]) == ("matrix", 8, 8)
    assert best["layers"] == 2 and best["score"] < 0.05
    exact = next(r for r in rows if r["layout"] == "matrix" and r["in_factors"] == r["out_factors"] == [8, 8])
    assert exact["rank"] <= 2
    assert all(r["score"] > 0.5 for r in rows if r["layout"] == "plain")  # the reference among them
    assert {p["layer"] for p in points} == {"layer.0.dense", "layer.1.dense"}
    reference = next(r for r in rows if r["is_reference"])
    assert reference["macs_vs_reference"] == 1.0 and all(r["macs_vs_reference"] > 0 for r in rows)


def test_candidates_cover_orders_layouts_and_skew():
    labels = {c.label for c in candidates(384, 1536)}
    assert {"o2_plain_balanced", "o2_matrix_balanced", "o3_plain_balanced", "o3_matrix_skew4"} <= labels
    assert any("skew16" in label for label in labels)
    assert all(c.shape.n_in == 384 and c.shape.n_out == 1536 for c in candidates(384, 1536))


def test_layer_types_mask_the_layer_index():
    names = ["enc.layer.0.output.dense", "enc.layer.1.output.dense", "enc.layer.0.attention.output.dense"]
    groups = layer_types(names)
    assert list(groups.values()) == [names[:2], names[2:]]


def test_cli_writes_results_and_usable_proxy_configs(tmp_path):
    assert main(["model=tiny_bert", "--out", str(tmp_path / "res"), "--conf", str(tmp_path / "conf")]) == 0
    assert main(["model=tiny_bert", "--out", str(tmp_path / "cheap"), "--conf", str(tmp_path / "cheap"),
                 "--max-macs", "1.0"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "cheap" / "tiny_bert.csv")))
    limited = sorted((tmp_path / "cheap").glob("proxy_tiny_bert_*_macs1.yaml"))
    assert tmp_path / "cheap" / "proxy_tiny_bert_plain_1_macs1.yaml" in limited  # the reference qualifies
    for path in limited:
        cfg = OmegaConf.load(path)
        assert len(cfg.shapes) == 6  # complete: one shape per layer type
        for pattern, factors in cfg.shapes.items():  # every chosen shape is no costlier than the reference
            row = next(r for r in rows if r["type"] == pattern and r["layout"] == cfg.layout and
                       r["in_factors"] == str(list(factors[0])) and r["out_factors"] == str(list(factors[1])))
            assert float(row["macs_vs_reference"]) <= 1.0
    for name in ("tiny_bert.md", "tiny_bert.csv", "tiny_bert_points.csv", "tiny_bert_pareto.png"):
        assert (tmp_path / "res" / name).stat().st_size > 100
    configs = sorted((tmp_path / "conf").glob("proxy_tiny_bert_*.yaml"))
    assert [c.stem for c in configs] == [f"proxy_tiny_bert_{lay}_{k}" for lay in ("matrix", "plain")
                                         for k in (1, 2)]
    shape_cfg = OmegaConf.to_container(OmegaConf.load(configs[0]))
    shape_cfg.pop("defaults")
    model = load_model(load_model_cfg("tiny_bert"), num_labels=2)
    replaced = compress(copy.deepcopy(model), {"method": "saten", "eps": 0.5, "density": 0.1},
                        tt_shape=shape_cfg)
    assert len(replaced) == 12
    compressed = copy.deepcopy(model)
    compress(compressed, {"method": "tt", "eps": 0.5}, tt_shape=shape_cfg)
    assert len(shape_cfg["shapes"]) == 6  # q, k, v, attention output, intermediate, output
    for row in model_report(compressed)["layers"]:  # every layer got its type's proxy shape
        factors = next(f for pattern, f in shape_cfg["shapes"].items() if re.fullmatch(pattern, row["name"]))
        assert row["shape"] == factors[0] + factors[1]
