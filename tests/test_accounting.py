"""Accounting against hand-computed counts, and the report JSON schema."""

import json

import torch
from test_compress import tiny_bert
from torch import nn

from saten import SatenLinear, SVDLinear, TTShape, compress, layer_counts, model_report

LAYER_KEYS = {"name", "in_features", "out_features", "shape", "ranks", "nnz", "params", "dense_params",
              "rel_error_tt", "rel_error", "macs", "index_bytes", "activation_aware"}
TOTAL_KEYS = {"params", "dense_params", "ratio", "model_params", "dense_model_params", "model_ratio", "macs",
              "dense_macs"}


def test_saten_linear_counts_by_hand():
    shape = TTShape((4, 3), (5, 2))
    layer = SatenLinear(12, 10, shape, ranks=[1, 2, 3, 2, 1], nnz=7)
    cores = 1 * 4 * 2 + 2 * 3 * 3 + 3 * 5 * 2 + 2 * 2 * 1  # 8 + 18 + 30 + 4 = 60
    counts = layer_counts(layer)
    assert counts["params"] == cores + 7 + 10
    assert counts["dense_params"] == 12 * 10 + 10
    assert counts["macs"] == 3 * (12 + 10) + 7  # r_2 (N + M) + nnz
    assert counts["dense_macs"] == 120
    assert counts["index_bytes"] == 4 * 7 + 4 * (10 + 1)  # CSR, int32, rows = out features
    nm = SatenLinear(12, 10, shape, ranks=[1, 2, 3, 2, 1], nnz=60, sparsity="nm", nm=(2, 4))
    assert layer_counts(nm)["index_bytes"] == 15  # 2 bits per kept value


def test_matrix_layout_macs_by_hand():
    layer = SatenLinear(12, 10, TTShape((4, 3), (5, 2), "matrix"), ranks=[1, 2, 1])
    # core 1 (1, 4*5, 2) contracts n1=4 with n2=3 left: 4*5*2*3 = 120; core 2, m1=5 done: 5*2*3*2 = 60
    assert layer_counts(layer)["macs"] == 120 + 60


def test_svd_counts_by_hand():
    layer = SVDLinear(12, 10, rank=3, bias=False)
    assert layer_counts(layer) == {"params": 66, "dense_params": 120, "macs": 66, "dense_macs": 120,
                                   "index_bytes": 0}


def test_report_schema_and_totals(tmp_path):
    model = tiny_bert()
    dense_total = sum(p.numel() for p in model.parameters())
    names = compress(model, {"method": "saten", "eps": 0.6, "density": 0.1})
    report = json.loads(json.dumps(model_report(model, names)))
    assert {"model", "method", "eps", "density", "sparsity", "seconds", "layers", "total"} <= set(report)
    assert report["method"] == "saten" and report["eps"] == 0.6 and report["density"] == 0.1
    assert all(set(row) == LAYER_KEYS for row in report["layers"]) and len(report["layers"]) == 12
    total = report["total"]
    assert TOTAL_KEYS <= set(total)
    assert total["dense_model_params"] == dense_total
    assert total["model_params"] == sum(p.numel() for p in model.parameters())
    assert total["params"] == sum(r["params"] for r in report["layers"])
    assert abs(total["ratio"] - total["params"] / total["dense_params"]) < 1e-12
    row = report["layers"][0]
    assert row["ranks"][0] == row["ranks"][-1] == 1 and len(row["ranks"]) == 5
    assert row["rel_error"] <= row["rel_error_tt"] <= 0.6 + 1e-6


def test_dense_method_reports_ratio_one():
    model = tiny_bert()
    report = model_report(model, compress(model, {"method": "dense"}))
    assert report["layers"] == [] and report["total"]["model_ratio"] == 1.0


def test_tied_weights_are_counted_once():
    emb = nn.Embedding(10, 4)
    model = nn.ModuleDict({"emb": emb, "head": nn.Linear(4, 10, bias=False)})
    model["head"].weight = emb.weight
    assert model_report(model, [])["total"]["model_params"] == 40
    assert torch.equal(model["head"].weight, emb.weight)
