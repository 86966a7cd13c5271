"""LightningModule for GLUE sequence classification (and STS-B regression) with a Saten-compressed model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from saten.data.glue import get_task
from saten.data.metrics import GlueMetric
from saten.errors import ConfigError
from saten.lit.optim import TrainingHooks

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
SPLIT_SUFFIX = {"validation_matched": "_m", "validation_mismatched": "_mm"}


def to_plain(cfg) -> dict | None:
    """A resolved plain-dict copy of a config node (DictConfig, Mapping or None)."""
    if cfg is None:
        return None
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return {k: (to_plain(v) if isinstance(v, (Mapping, DictConfig)) else v) for k, v in dict(cfg).items()}


class GlueClassifier(TrainingHooks, L.LightningModule):
    """Pretrained model + task head, compressed with ``saten.compress``, fine-tuned on one GLUE task.

    The model is loaded and compressed in ``__init__`` (compression is deterministic), so
    ``GlueClassifier.load_from_checkpoint`` and :func:`load_run` recreate the exact structure before
    loading the weights.

    Parameters
    ----------
    model : Mapping
        The ``model`` config group (see :func:`saten.models.load_model`).
    task : Mapping
        The ``task`` config group; uses ``name`` and ``metric`` (the main metric key, e.g. ``f1``).
    saten : Mapping
        The ``saten`` config group (``method: dense`` leaves the model as it is).
    tt_shape : Mapping, optional
        The ``tt_shape`` config group.
    optim : Mapping, optional
        The ``optim`` config group (see :func:`saten.lit.optim.build_optimizer`); needed for training only.
    compile : bool
        ``torch.compile`` the model in place.
    start_from_teacher : bool
        A fresh training build: with ``distill.init_from_teacher`` the model takes the dense teacher's
        weights before it is compressed. Reloads leave it off (the saved weights replace them, and the
        teacher run need not exist any more); not a hyperparameter.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        The (compressed) sequence-classification model.
    replaced : list of str
        Qualified names of the modules ``compress`` replaced.
    compress_seconds : float
        Wall time of loading + compressing.
    best : dict of str to float
        Validation metrics of the best epoch so far (by the main metric), keys without prefix.
    last_metrics : dict of str to float
        Metrics of the latest validation run, keys without prefix.
    """

    def __init__(self, model: Mapping, task: Mapping, saten: Mapping, tt_shape: Mapping | None = None,
                 optim: Mapping | None = None, compile: bool = False, calibration: Mapping | None = None,
                 calibration_batches: list | None = None, distill: Mapping | None = None,
                 recompute_activations: bool = False, schedule: Mapping | None = None,
                 start_from_teacher: bool = False):
        super().__init__()
        from saten.calibration import fisher_from_teacher
        from saten.distill import check_distill_config, init_from_teacher, load_teacher
        from saten.models import load_model
        from saten.progressive import compress_for_training

        model, task, saten, tt_shape, optim, calibration, distill, schedule = map(
            to_plain, (model, task, saten, tt_shape, optim, calibration, distill, schedule))
        self.save_hyperparameters({"model": model, "task": task, "saten": saten, "tt_shape": tt_shape,
                                   "optim": optim, "compile": bool(compile), "calibration": calibration,
                                   "distill": distill, "recompute_activations": bool(recompute_activations),
                                   "schedule": schedule})
        self.distiller = None  # the teacher loads when fitting starts (evaluation never needs it)
        check_distill_config(distill, calibration=calibration)
        self.spec = self.task_spec(task["name"])
        self.metric_name = str(task.get("metric") or self.spec.metric)
        problem_type = "regression" if self.spec.is_regression else "single_label_classification"
        start = time.perf_counter()
        self.model = load_model(model, head="sequence_classification", num_labels=self.spec.num_labels,
                                problem_type=problem_type)
        if start_from_teacher and (distill or {}).get("init_from_teacher"):
            init_from_teacher(self.model, distill, self.spec.name, model.get("name"))
        fisher_model = None  # the sensitivity budget's Fisher: the teacher's trained head, not a random one
        if calibration_batches is not None and fisher_from_teacher(calibration):
            fisher_model = load_teacher(distill, self.spec.name)
        self.replaced, self.progressive = compress_for_training(self.model, saten, tt_shape, calibration,
                                                                calibration_batches, schedule, fisher_model)
        del fisher_model
        self.compress_seconds = time.perf_counter() - start
        if recompute_activations:  # keep the FFN activation's input only (saten.autograd): less memory
            from saten.autograd import recompute_activations as keep_activation_inputs

            keep_activation_inputs(self.model)
        # from_pretrained returns eval mode and Lightning keeps submodule modes: train mode = dropout on
        self.model.train()
        if compile:
            self.model.compile()
        self.eval_splits = list(self.spec.eval_splits)
        self.val_metrics = nn.ModuleList([self.make_metric(split) for split in self.eval_splits])
        self._val_loss = [[] for _ in self.eval_splits]
        self.best: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.compression_report: dict | None = None  # filled by saten.callbacks.CompressionStats

    @staticmethod
    def task_spec(name: str):
        """The task description (a :class:`saten.data.glue.GlueTask`; subclasses return their own)."""
        return get_task(name)

    def make_metric(self, split: str):
        """The accumulating metric of one evaluation split."""
        return GlueMetric(self.spec.name, split)

    # ---- forward / steps -------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]):
        """Run the HF model on a batch dict (with ``labels`` the output carries ``loss``)."""
        return self.model(**batch)

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1).float() if self.spec.is_regression else logits.argmax(dim=-1)

    def on_fit_start(self) -> None:
        from saten.distill import Distiller, distill_enabled

        distill = self.hparams.get("distill")
        if distill_enabled(distill) and self.distiller is None:
            self.distiller = Distiller.from_config(distill, self.spec.name, self.spec.is_regression)
        if self.distiller is not None:
            self.distiller.to(self.device)

    def training_step(self, batch, batch_idx):
        size = batch["input_ids"].shape[0]
        if self.distiller is None:
            loss = self(batch).loss
        else:
            out = self.model(**batch, output_hidden_states=self.distiller.wants_hidden)
            loss, parts = self.distiller.loss(out, batch)
            self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=True, on_epoch=False,
                          batch_size=size)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        out = self(batch)
        self.val_metrics[dataloader_idx].update(self._predictions(out.logits), batch["labels"])
        size = batch["labels"].shape[0]
        self._val_loss[dataloader_idx].append(torch.stack([out.loss.detach().float() * size,
                                                           out.loss.new_tensor(float(size))]))

    def on_validation_epoch_start(self) -> None:
        self._val_loss = [[] for _ in self.eval_splits]
        for metric in self.val_metrics:
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, float] = {}
        losses = []
        for i, split in enumerate(self.eval_splits):
            if not self._val_loss[i]:
                continue
            metrics.update(self.val_metrics[i].compute())
            total, count = torch.stack(self._val_loss[i]).sum(dim=0)  # (sum of losses, examples)
            if self.trainer.world_size > 1:
                total, count = self.all_gather(total).sum(), self.all_gather(count).sum()
            loss = float(total / count)
            losses.append(loss)
            if len(self.eval_splits) > 1:  # MNLI: loss_m, loss_mm
                metrics["loss" + SPLIT_SUFFIX.get(split, f"_{split}")] = loss
        if not losses:
            return
        metrics["loss"] = sum(losses) / len(losses)
        self.last_metrics = dict(metrics)
        # values are already global (GlueMetric syncs, losses are gathered); syncing averages equal numbers
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, add_dataloader_idx=False, sync_dist=True)
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        if self.metric_name not in metrics:
            raise ConfigError(f"task.metric={self.metric_name}: not among the computed metrics "
                              f"{sorted(metrics)}; pick one of them")
        higher = not self.metric_name.endswith("loss")
        value, best = metrics[self.metric_name], self.best.get(self.metric_name)
        if best is None or (value > best if higher else value < best):
            self.best = dict(metrics)
            self.best["epoch"] = float(self.current_epoch)
        self.log_dict({f"best/{k}": v for k, v in self.best.items()}, add_dataloader_idx=False,
                      sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> torch.Tensor:
        """Class ids (STS-B: scores) of an unlabeled test batch."""
        batch = {k: v for k, v in batch.items() if k != "labels"}
        return self._predictions(self(batch).logits).cpu()



def build_module(cfg: Mapping, calibration_batches: list | None = None,
                 fresh: bool = False) -> L.LightningModule:
    """The LightningModule of a full run config (keys model, task, saten, tt_shape, optim, lora).

    ``task.kind`` picks the class: ``glue`` :class:`GlueClassifier`, ``superglue``
    :class:`saten.lit.superglue.SuperGlueClassifier`, ``lm`` :class:`saten.lit.causal_lm.CausalLM`.
    ``fresh`` marks a build for training from scratch (``start_from_teacher`` of :class:`GlueClassifier`).
    """
    kind = cfg["task"].get("kind", "glue")
    if kind == "lm":
        from saten.lit.causal_lm import CausalLM

        return CausalLM.from_config(cfg, calibration_batches)
    cls = GlueClassifier
    if kind == "superglue":
        from saten.lit.superglue import SuperGlueClassifier as cls
    return cls(model=cfg["model"], task=cfg["task"], saten=cfg["saten"],
                          tt_shape=cfg.get("tt_shape"), optim=cfg.get("optim"),
                          compile=bool(cfg.get("compile", False)), calibration=cfg.get("calibration"),
                          calibration_batches=calibration_batches, distill=cfg.get("distill"),
                          recompute_activations=bool(cfg.get("recompute_activations", False)),
                          schedule=cfg.get("schedule"), start_from_teacher=fresh)


def save_run_model(module: GlueClassifier, run_dir: str | Path) -> Path:
    """Write the module's model weights to ``<run_dir>/model.safetensors`` (tied tensors handled)."""
    from safetensors.torch import save_model

    path = Path(run_dir) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(getattr(module.model, "_orig_mod", module.model), str(path))
    return path


def load_run(run_dir: str | Path, map_location: str = "cpu") -> GlueClassifier:
    """Rebuild the fine-tuned compressed model of a finished run.

    Parameters
    ----------
    run_dir : path
        A run folder holding ``config.yaml`` (the run's resolved config) and ``model.safetensors``.
    map_location : str
        Device to load the weights onto.

    Returns
    -------
    GlueClassifier
        In eval mode, ``module.run_config`` holds the run's config.
    """
    from safetensors.torch import load_file, load_model

    from saten.reload import match_state

    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise ConfigError(f"ckpt_path={run_dir}: no {name} in this run dir; pass a run dir of a finished "
                              f"training run (or a .ckpt file)")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=False)
    with torch.random.fork_rng():  # a random-init (tiny) model must get the run's init, hence its TT ranks
        torch.manual_seed(int(cfg.get("seed") or 0))
        module = build_module(cfg)
    # a fresh compression may give other ranks (another device, library version): the saved ones win
    match_state(module.model, load_file(str(run_dir / MODEL_FILE)))
    load_model(module.model, str(run_dir / MODEL_FILE), strict=True, device=map_location)
    module.run_config = cfg
    return module.eval()
