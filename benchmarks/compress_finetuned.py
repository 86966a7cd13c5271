"""How much of a fine-tuned dense model survives Saten compression with no training afterwards.

``python benchmarks/compress_finetuned.py --run <dense run dir> [--eps 0.3 0.5 0.7 0.85] [--density 0.1]``
compresses the fine-tuned model of a finished dense run (its task head included) at each ε and evaluates it on
the run's own dev split, and writes ``results/<task>_compress_finetuned.md`` (or ``--out``). A diagnostic for
issue 7: it separates "the compressed weights cannot represent the task" from "fine-tuning fails to find it".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from saten import compress, model_report
from saten.calibration import calibrated_scales, calibration_batches
from saten.families import build_datamodule
from saten.lit import load_run
from saten.models import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def evaluate(module, datamodule) -> dict:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return dict(module.last_metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="run dir of a finished dense fine-tuning run")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.85])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--activation-aware", type=float, default=None, metavar="ALPHA",
                        help="also compress activation-aware (this alpha, 128 training rows)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run / "config.yaml")
    if cfg.saten.method != "dense":
        sys.exit(f"error: --run={args.run}: a {cfg.saten.method} run; pass the run dir of a dense run")
    task = cfg.task.name
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("validate")
    metric = cfg.task.metric
    command = (f"python benchmarks/compress_finetuned.py --run {args.run} --eps "
               f"{' '.join(str(e) for e in args.eps)} --density {args.density}"
               + (f" --activation-aware {args.activation_aware}" if args.activation_aware else ""))
    calibration = None
    if args.activation_aware:
        calibration = {"samples": 128, "alpha": args.activation_aware, "activation_aware": True}
        batches = calibration_batches(datamodule, calibration)
    title = f"# Compressing the fine-tuned dense {cfg.model.name} {task} model, no training afterwards"
    lines = [title, "",
             *machine_lines(command), "",
             f"The dense run: `{args.run}` (its own dev split, main metric {metric}). Saten(u) on every",
             f"encoder Linear at density {args.density}; targeted ratio as in results/compression/.", "",
             f"| ε | calibration | targeted ratio | mean error TT+S | {metric} | accuracy |",
             "|---:|---|---:|---:|---:|---:|"]
    torch.manual_seed(0)
    dense = evaluate(load_run(args.run), datamodule)
    accuracy = 100 * dense.get("accuracy", float("nan"))
    lines.append(f"| dense | - | 1 | 0 | {100 * dense[metric]:.1f} | {accuracy:.1f} |")
    print(lines[-1], flush=True)
    variants = [None] + ([calibration] if calibration else [])
    for eps, calib in ((e, c) for e in args.eps for c in variants):
        module = load_run(args.run)
        saten = {"method": "saten", "eps": eps, "density": args.density}
        scales = calibrated_scales(module.model, saten, calib, batches) if calib else None
        replaced = compress(module.model, saten, channel_scales=scales)
        report = model_report(module.model, replaced)
        layers = report["layers"]
        metrics = evaluate(module, datamodule)
        error = sum(r["rel_error"] for r in layers) / len(layers)
        label = f"activation-aware α {calib['alpha']}" if calib else "none"
        lines.append(f"| {eps} | {label} | {report['total']['ratio']:.4f} | {error:.3f} | "
                     f"{100 * metrics[metric]:.1f} | "
                     f"{100 * metrics.get('accuracy', float('nan')):.1f} |")
        print(lines[-1], flush=True)
    out = args.out or REPO / "results" / f"{task}_compress_finetuned.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
