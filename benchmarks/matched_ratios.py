"""SVD and TT settings at the same targeted ratio as Saten(u) and Saten(2:4), measured on real weights.

``python benchmarks/matched_ratios.py [--model minilm]`` compresses the model with Saten(u) (the saten_u
file: ε 0.85, density 0.1) and Saten(2:4) (saten_24: ε 1.0), then searches the SVD ``svd_ratio`` and the
TT-only ε that give the same targeted ratio, and checks each with :func:`saten.compress` +
:func:`saten.model_report`. Writes ``results/compression/matched_ratios_<model>.{md,csv}`` and the values as
the ``matched.<model>`` block of ``conf/method_preset/matched.yaml`` (what the method presets read).
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path

from omegaconf import OmegaConf

from saten import compress, model_report
from saten.budget import fit_budget
from saten.compress import find_targets
from saten.config import SatenConfig
from saten.lowrank import svd_rank
from saten.models import load_model
from saten.report import compose
from saten.tt import balanced_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measured(base, cfg: dict) -> dict:
    """The report totals of ``base`` compressed with ``cfg`` (on a copy)."""
    model = copy.deepcopy(base)
    return model_report(model, compress(model, cfg))["total"]


def svd_ratio_for(linears, target: float) -> float:
    """The ``svd_ratio`` (4 decimals) whose SVD targeted ratio lies closest to ``target``."""
    dense = sum(lin.in_features * lin.out_features + (lin.bias is not None) * lin.out_features
                for lin in linears)

    def ratio(r: float) -> float:
        kept = sum(min(svd_rank(lin.in_features, lin.out_features, r), min(lin.in_features, lin.out_features))
                   * (lin.in_features + lin.out_features) + (lin.bias is not None) * lin.out_features
                   for lin in linears)
        return kept / dense

    grid = [k / 10000 for k in range(1, 10001)]
    return min(grid, key=lambda r: (abs(ratio(r) - target), r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="a conf/model file: minilm, bert_base, ...")
    args = parser.parse_args()
    model_cfg = compose([f"model={args.model}"]).model
    causal = model_cfg.arch == "llama"
    base = load_model(model_cfg, head="causal_lm" if causal else "sequence_classification",
                      num_labels=None if causal else 2)
    linears = [base.get_submodule(n) for n in find_targets(base)]
    shapes = [balanced_shape(lin.in_features, lin.out_features) for lin in linears]
    conf = REPO / "conf" / "saten"
    rows, matched = [], {}
    for key, file in (("u", "saten_u"), ("24", "saten_24")):
        saten = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(conf / f"{file}.yaml")).items()
                 if k != "target_ratio" and v is not None}
        anchor = measured(base, saten)["ratio"]
        svd = svd_ratio_for(linears, anchor)
        tt_cfg = SatenConfig.from_any({"method": "tt", "eps": 0.6, "target_ratio": anchor}, warn=False)
        tt_eps = fit_budget(linears, shapes, tt_cfg)[0].eps
        matched |= {f"svd_ratio_{key}": svd, f"tt_eps_{key}": tt_eps, f"ratio_{key}": round(anchor, 4)}
        label = "Saten(u)" if key == "u" else "Saten(2:4)"
        for method, cfg in ((f"{label} ({file} file)", saten),
                            (f"SVD at {label}'s ratio", {"method": "svd", "svd_ratio": svd}),
                            (f"TT at {label}'s ratio", {"method": "tt", "eps": tt_eps})):
            total = measured(base, cfg)
            knob = (f"svd_ratio {cfg['svd_ratio']}" if cfg["method"] == "svd" else f"ε {cfg['eps']}"
                    + (f", density {cfg['density']}" if cfg.get("density") else "")
                    + (f", {cfg['nm'][0]}:{cfg['nm'][1]}" if cfg.get("nm") else ""))
            miss = f"{total['ratio'] / anchor - 1:+.2%}"
            rows.append({"anchor": label, "method": method, "setting": knob,
                         "ratio": round(total["ratio"], 4), "vs anchor": miss,
                         "params": total["params"], "model_ratio": round(total["model_ratio"], 4),
                         "macs": total["macs"]})
            print(rows[-1], flush=True)
    command = f"python benchmarks/matched_ratios.py --model {args.model}"
    out = REPO / "results" / "compression" / f"matched_ratios_{args.model}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = list(rows[0])
    lines = [f"# Matched targeted ratios, {args.model}", "", *machine_lines(command), "",
             "SVD `svd_ratio` and TT-only ε chosen so that their targeted ratio (params of the replaced "
             "Linears / dense) matches Saten(u) and Saten(2:4); every row is measured with "
             "`saten.compress` + `model_report` on the real weights. The method presets "
             "(`method_preset=svd`, `tt`, `svd_at_24`, `tt_at_24`) read these values from "
             f"`matched.{args.model}` in `conf/method_preset/matched.yaml`.", "",
             f"| {' | '.join(head)} |", "|" + "---|" * len(head),
             *[f"| {' | '.join(f'{r[k]:,}' if isinstance(r[k], int) else str(r[k]) for k in head)} |"
               for r in rows]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    preset = REPO / "conf" / "method_preset" / "matched.yaml"  # one block per model, others kept
    blocks = OmegaConf.load(preset).matched if preset.exists() else OmegaConf.create()
    blocks[args.model] = matched
    preset.write_text("# @package _global_\n# Written by benchmarks/matched_ratios.py --model <model> (see "
                      "results/compression/matched_ratios_<model>.md); do not edit by hand.\n"
                      + OmegaConf.to_yaml(OmegaConf.create({"matched": blocks})))
    print(f"wrote {out}.md, {out}.csv, {preset}")


if __name__ == "__main__":
    main()
