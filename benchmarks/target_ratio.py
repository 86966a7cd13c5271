"""The global budget (``saten.target_ratio``) on real weights: requested vs reached targeted ratio.

``python benchmarks/target_ratio.py [--model minilm] [--targets 0.25 0.33 0.5]`` compresses the model with
``saten.target_ratio`` set, for Saten(u) (density 0.1 as the floor), TT only and Saten(2:4), and writes
``results/compression/target_ratio_<model>.md``: the ε (and density) chosen, the targeted ratio the
compressed model reports, the relative miss, the mean relative error and the wall time (search included).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

from saten import compress, model_report
from saten.errors import ConfigError
from saten.models import load_model
from saten.report import compose

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {"Saten(u), density floor 0.1": {"method": "saten", "density": 0.1},
           "TT only": {"method": "tt"},
           "Saten(2:4)": {"method": "saten", "sparsity": "nm", "nm": [2, 4], "density": None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="a conf/model file")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.33, 0.5, 0.6])
    args = parser.parse_args()
    base = load_model(compose([f"model={args.model}"]).model, head="sequence_classification", num_labels=2)
    command = f"python benchmarks/target_ratio.py --model {args.model} --targets " + " ".join(
        str(t) for t in args.targets)
    lines = [f"# Global budget (`saten.target_ratio`), {args.model}", "", *machine_lines(command), "",
             "One global ε by bisection (TT ranks only), then the budget left is spent on the unstructured "
             "density (the configured density is a floor); TT-only and N:M take the closer of the two ε that "
             "bracket the target. Reached = the targeted ratio `model_report` gives for the compressed "
             "model.",
             "", "| method | target | chosen ε | chosen density | reached ratio | miss | mean error | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, cfg in METHODS.items():
        for target in args.targets:
            model = copy.deepcopy(base)
            start = time.perf_counter()
            try:
                report = model_report(model, compress(model, cfg | {"eps": 0.5, "target_ratio": target}))
            except ConfigError as err:
                lines.append(f"| {label} | {target} | - | - | unreachable: {err} | - | - | - |")
                continue
            seconds = time.perf_counter() - start
            reached = report["total"]["ratio"]
            error = statistics.mean(r["rel_error"] for r in report["layers"])
            density = "-" if report["density"] is None else f"{report['density']:.6f}"
            lines.append(f"| {label} | {target} | {report['eps']} | {density} | {reached:.4f} "
                         f"| {reached / target - 1:+.3%} | {error:.4f} | {seconds:.1f} |")
            print(lines[-1], flush=True)
    out = REPO / "results" / "compression" / f"target_ratio_{args.model}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
