"""Lightning callbacks that put the compression figures and the run's outcome where people look.

- :class:`CompressionStats`: at fit start (or validate/test/predict start in eval-only runs) the
  compression report of :func:`saten.model_report` goes to every logger (hyperparameters + metrics;
  a per-layer ``wandb.Table`` on W&B) and to ``report.json`` / ``compression_layers.csv`` in the run dir.
- :class:`RunSummary`: after the final validation (and the test split, for perplexity) writes
  ``summary.json`` (density, eps, method, ratio,
  model_ratio, params, best/<metric>, final metrics, seconds, seed, task, model), sets the same keys in
  the W&B run summary and saves the compressed model (``model.safetensors``).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.json"
LAYERS_FILE = "compression_layers.csv"


def compression_report(pl_module: LightningModule) -> dict:
    """The :func:`saten.model_report` of ``pl_module.model`` (computed once, cached on the module)."""
    report = getattr(pl_module, "compression_report", None)
    if report is None:
        from saten import model_report

        # cfg=None: the report takes the effective config recorded by compress (unused knobs nulled)
        report = model_report(pl_module.model, list(pl_module.replaced),
                              model_name=pl_module.hparams.model.get("name"))
        report.setdefault("config", (getattr(pl_module.model, "saten_info", None) or {}).get("config"))
        pl_module.compression_report = report
    return report


def effective_density(report: dict) -> float | None:
    """Kept fraction of each compressed layer (N/M for N:M, 0 without a residual); None for dense runs."""
    from saten.config import SatenConfig

    method = report.get("method")
    if method in (None, "dense"):
        return None
    if not report.get("config"):
        return report.get("density")
    return SatenConfig.from_any(report["config"], warn=False).effective_density


def compression_summary(report: dict) -> dict:
    """Flat key -> value view of a report: the figures a dashboard plots runs against."""
    total = report.get("total", {})
    summary = {key: report.get(key) for key in ("method", "eps", "sparsity")}
    summary["density"] = effective_density(report)
    summary.update({
        "ratio": total.get("ratio"),
        "model_ratio": total.get("model_ratio"),
        "params": total.get("model_params"),
        "dense_params": total.get("dense_model_params"),
        "targeted_params": total.get("params"),
        "targeted_dense_params": total.get("dense_params"),
        "macs": total.get("macs"),
        "dense_macs": total.get("dense_macs"),
        "index_bytes": total.get("index_bytes"),
        "layers": len(report.get("layers", [])),
        "compress_seconds": report.get("seconds"),
    })
    return summary


def _cell(value):
    """A layer-table cell: scalars as they are, anything else as compact JSON."""
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


def layer_table(report: dict) -> tuple[list[str], list[list]]:
    """Columns and rows of the per-layer table (union of the layer dicts' keys, in first-seen order)."""
    columns: list[str] = []
    for row in report.get("layers", []):
        columns += [key for key in row if key not in columns]
    return columns, [[_cell(row.get(key)) for key in columns] for row in report.get("layers", [])]


def _numeric(values: dict) -> dict:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run_dir(trainer: Trainer, output_dir) -> Path:
    return Path(output_dir if output_dir is not None else trainer.default_root_dir)


class CompressionStats(Callback):
    """Log the compression report once per run, to every logger and to the run dir.

    Parameters
    ----------
    output_dir : path, optional
        The run dir (default ``trainer.default_root_dir``).
    """

    def __init__(self, output_dir: str | Path | None = None):
        self.output_dir = output_dir
        self.logged = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_report(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit":
            self.log_report(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_report(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_report(trainer, pl_module)

    def log_report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the report (once) and send it to the loggers and the run dir."""
        if self.logged:
            return
        self.logged = True
        report = compression_report(pl_module)
        summary = compression_summary(report)
        columns, rows = layer_table(report)
        if trainer.is_global_zero:
            run_dir = _run_dir(trainer, self.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
            with open(run_dir / LAYERS_FILE, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(rows)
        for logger in trainer.loggers:
            logger.log_hyperparams({"compression": summary})
            logger.log_metrics({f"compression/{k}": v for k, v in _numeric(summary).items()}, step=0)
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                import wandb

                logger.experiment.log({"compression/layers": wandb.Table(columns=columns, data=rows)})
                logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})


class RunSummary(Callback):
    """Write ``summary.json`` (and the W&B run summary) after the final validation; save the model.

    Parameters
    ----------
    output_dir : path, optional
        The run dir (default ``trainer.default_root_dir``).
    save_model : bool
        After training, write ``model.safetensors`` (plus ``config.yaml`` when the run has none)
        so that :func:`saten.lit.load_run` can rebuild the model.
    seed : int, optional
        The run's seed, recorded in the summary.
    """

    def __init__(self, output_dir: str | Path | None = None, save_model: bool = True,
                 seed: int | None = None):
        self.output_dir = output_dir
        self.save_model = save_model
        self.seed = seed
        self.start = time.perf_counter()
        self.fit_seconds: float | None = None
        self.trained = False
        self.final: dict[str, float] = {}
        self.summary: dict = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self.start
        self.trained = not trainer.fast_dev_run
        best_path = getattr(trainer.checkpoint_callback, "best_model_path", "")
        # with a best checkpoint, the model is saved after the final validation has loaded it
        self.write(trainer, pl_module, save=not best_path)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking and not trainer.fast_dev_run:
            last = getattr(pl_module, "last_metrics", None) or {
                k[len("val/"):]: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.final = {f"val/{k}": float(v) for k, v in last.items()}
            self.write(trainer, pl_module, save=True)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "test" and not trainer.fast_dev_run:
            last = getattr(pl_module, "test_metrics", None) or {
                k[len("test/"):]: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
            self.final.update({f"test/{k}": float(v) for k, v in last.items()})
            self.write(trainer, pl_module)

    def build(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """The summary dict (see the module docstring)."""
        hparams = pl_module.hparams
        summary = compression_summary(compression_report(pl_module))
        summary["status"] = "completed"  # a failed multirun job: "failed" (saten.failure)
        summary.update({"task": hparams.task["name"], "model": hparams.model.get("name"),
                        "seed": self.seed, "metric": getattr(pl_module, "metric_name", None),
                        "trained": self.trained, "epochs": trainer.current_epoch if self.trained else 0,
                        "global_step": trainer.global_step,
                        "seconds": self.fit_seconds if self.trained else time.perf_counter() - self.start})
        summary.update({f"best/{k}": v for k, v in getattr(pl_module, "best", {}).items()})
        summary.update(getattr(pl_module, "recovery", None) or {})  # saten.recover: errors before / after
        summary.update(self.final)
        return summary

    def write(self, trainer: Trainer, pl_module: LightningModule, save: bool = False) -> None:
        """Write ``summary.json``, update the W&B summary and (``save`` and trained) save the model."""
        summary = self.build(trainer, pl_module)
        self.summary = summary
        if not trainer.is_global_zero:
            return
        run_dir = _run_dir(trainer, self.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})
        if save and self.save_model and self.trained:
            from saten.lit.classification import CONFIG_FILE, save_run_model

            save_run_model(pl_module, run_dir)
            if not (run_dir / CONFIG_FILE).exists():
                OmegaConf.save(OmegaConf.create(dict(pl_module.hparams)), run_dir / CONFIG_FILE)
