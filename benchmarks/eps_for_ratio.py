"""Which ε gives which targeted ratio: MiniLM (and optionally SmolLM2), Saten(u) at a fixed density.

``python benchmarks/eps_for_ratio.py [--model minilm] [--density 0.1]`` writes
``results/compression/eps_for_ratio_<model>.md``: per ε the targeted and model ratios, the mean TT and final
relative errors and MACs, from :func:`saten.model_report` on the real weights (no training).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

from saten import compress, model_report
from saten.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress import MODELS  # noqa: E402
from machine import machine_lines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.84, 0.85, 0.86, 0.88, 0.9, 0.95, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=list(MODELS))
    parser.add_argument("--density", type=float, default=0.1)
    args = parser.parse_args()
    head = "sequence_classification" if args.model == "minilm" else "causal_lm"
    base = load_model(MODELS[args.model], head=head, num_labels=2 if head != "causal_lm" else None)
    command = f"python benchmarks/eps_for_ratio.py --model {args.model} --density {args.density}"
    lines = [f"# ε → compression ratio, {args.model}, Saten(u) density {args.density}", "",
             *machine_lines(command), "",
             "Targeted ratio = (TT cores + kept values + bias) / (N·M + bias) over the replaced layers;",
             "model ratio = all parameters / all dense ones. Errors: ‖W − Ŵ‖/‖W‖, mean over layers.", "",
             "| ε | targeted ratio | compression | model ratio | error TT | error TT+S | MACs/token |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for eps in EPS:
        model = copy.deepcopy(base)
        cfg = {"method": "saten", "eps": eps, "density": args.density}
        report = model_report(model, compress(model, cfg))
        t, layers = report["total"], report["layers"]
        lines.append(f"| {eps} | {t['ratio']:.4f} | {1 / t['ratio']:.2f}x | {t['model_ratio']:.4f} "
                     f"| {statistics.mean(r['rel_error_tt'] for r in layers):.4f} "
                     f"| {statistics.mean(r['rel_error'] for r in layers):.4f} | {t['macs']:,} |")
        print(lines[-1], flush=True)
    out = REPO / "results" / "compression" / f"eps_for_ratio_{args.model}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
