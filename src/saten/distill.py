"""Knowledge distillation from a dense fine-tuned teacher (the ``distill`` config group).

Loss of a training batch (``w_kd`` = ``kd_weight``, ``T`` = ``temperature``, ``w_h`` = ``hidden_weight``)::

    (1 − w_kd)·task + w_kd·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + w_h·mean_l MSE(h_l, h_l^teacher)

Regression tasks (STS-B) replace the KL term by the squared difference of the two predictions. The hidden
term matches every layer's output (``output_hidden_states``, embeddings included) of a student and a
teacher of the same architecture, as layer-wise distillation of tensor-compressed BERT does. The teacher
is a finished dense run of this pipeline (a run dir or a ``.ckpt``), frozen, in eval mode, and never part
of the student's state dict, optimizer or checkpoints.

``init_from_teacher`` (with or without distillation terms) starts the student from the teacher's fine-tuned
weights, task head included, before it is compressed: the post-training setting of compressing a model
that already knows the task, instead of compressing the pretrained one and learning the task afterwards.

``distill.teacher=auto`` picks the newest completed dense run under ``paths.log_dir`` of the same model,
task, seed and training subset (:func:`find_teacher`); the chosen run dir replaces ``auto`` before the run
writes its ``config.yaml``, so the run records which teacher it had. A multirun that lists the dense row
before the distilled ones (``experiment=ablation``) trains its own teachers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from saten.errors import ConfigError

__all__ = ["Distiller", "distill_enabled", "find_teacher", "init_from_teacher", "load_teacher",
           "resolve_teacher", "uses_teacher"]
log = logging.getLogger(__name__)
AUTO = "auto"


def distill_enabled(cfg: Mapping | None) -> bool:
    """Whether the ``distill`` config asks for any distillation term."""
    cfg = cfg or {}
    return bool(cfg.get("kd_weight") or cfg.get("hidden_weight"))


def uses_teacher(cfg: Mapping | None, calibration: Mapping | None = None) -> bool:
    """Whether the ``distill`` config needs a teacher run (a distillation term or ``init_from_teacher``),
    or the ``calibration`` config does (``calibration.fisher=teacher``)."""
    from saten.calibration import fisher_from_teacher

    needs_teacher = distill_enabled(cfg) or bool((cfg or {}).get("init_from_teacher"))
    return needs_teacher or fisher_from_teacher(calibration)


def check_distill_config(cfg: Mapping | None, teacher_must_exist: bool = False,
                         calibration: Mapping | None = None) -> None:
    """One-line errors for bad ``distill`` values (before any model is loaded)."""
    if not uses_teacher(cfg, calibration):
        return
    if distill_enabled(cfg):
        _check_loss_weights(cfg)
    teacher = cfg.get("teacher")
    if not teacher:
        raise ConfigError("distill.teacher=null: pass the run dir (or .ckpt) of a dense fine-tuned run of "
                          "the same task, e.g. distill.teacher=logs/runs/mrpc/dense/<time>")
    if teacher_must_exist and str(teacher) != AUTO and not Path(str(teacher)).exists():
        raise ConfigError(f"distill.teacher={teacher}: no such run dir or checkpoint; train the teacher "
                          f"first (python run.py task=<task> saten=dense) and pass its run dir")


def _check_loss_weights(cfg: Mapping) -> None:
    kd, hidden = cfg.get("kd_weight") or 0.0, cfg.get("hidden_weight") or 0.0
    temperature = cfg.get("temperature")
    if not 0 <= kd <= 1:
        raise ConfigError(f"distill.kd_weight={kd}: must lie in [0, 1] (0 = task loss only)")
    if hidden < 0:
        raise ConfigError(f"distill.hidden_weight={hidden}: must be >= 0")
    if temperature is None or temperature <= 0:
        raise ConfigError(f"distill.temperature={temperature}: must be > 0, e.g. 2.0")


def _matching_keys(cfg: Mapping) -> dict:
    """What a teacher must share with its student: model, task, seed and training subset."""
    from saten.lit.classification import to_plain

    data = cfg.get("data") or {}
    return {"model": to_plain(cfg.get("model")), "task": to_plain(cfg.get("task")), "seed": cfg.get("seed"),
            "train_limit": data.get("train_limit")}


def _is_dense_teacher(run_dir: Path) -> bool:
    """A completed, trained dense run (no LoRA) whose weights are saved."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):  # being written by a running job
        return False
    finished = summary.get("status") == "completed" and bool(summary.get("trained"))
    saved = (run_dir / "model.safetensors").is_file() and (run_dir / "config.yaml").is_file()
    return finished and summary.get("method") == "dense" and saved


def find_teacher(log_dir: str | Path, cfg: Mapping) -> Path:
    """The newest completed dense run dir under ``log_dir`` with the model, task, seed and train subset of
    ``cfg`` (a composed run config).

    Raises
    ------
    ConfigError
        When there is none, naming the command that trains it.
    """
    from omegaconf import OmegaConf

    from saten.runs import newest_runs

    wanted = _matching_keys(cfg)
    for run_dir in newest_runs(log_dir, "summary.json"):
        if not _is_dense_teacher(run_dir):
            continue
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        if not (saved.get("lora") or {}).get("r") and _matching_keys(saved) == wanted:
            return run_dir
    task, model, seed = wanted["task"]["name"], wanted["model"]["name"], wanted["seed"]
    raise ConfigError(f"distill.teacher=auto: no completed dense run of model={model} task={task} "
                      f"seed={seed} under {log_dir}; train it first (python run.py model={model} task={task} "
                      f"seed={seed} saten=dense) or pass distill.teacher=<run dir>")


def resolve_teacher(cfg, resumed_run: Path | None = None) -> None:
    """Replace ``distill.teacher=auto`` in a composed run config by the run dir :func:`find_teacher` picks
    (a resumed run: the teacher its own ``config.yaml`` recorded)."""
    from omegaconf import OmegaConf

    distill = cfg.get("distill")
    if not uses_teacher(distill, cfg.get("calibration")) or str(distill.get("teacher")) != AUTO:
        return
    saved = resumed_run / "config.yaml" if resumed_run is not None else None
    if saved is not None and saved.is_file():
        cfg.distill.teacher = OmegaConf.load(saved).distill.teacher
    else:
        cfg.distill.teacher = str(find_teacher(cfg.paths.log_dir, cfg))
    log.info("distill.teacher=auto: %s", cfg.distill.teacher)


def _teacher_run(cfg: Mapping, task_name: str):
    """The teacher's LightningModule from a run dir or ``.ckpt`` of the same task."""
    from saten.lit import load_run
    from saten.lit.classification import GlueClassifier

    check_distill_config(cfg, teacher_must_exist=True)
    path = Path(str(cfg["teacher"]))
    if path.is_dir():
        module = load_run(path)
    else:
        module = GlueClassifier.load_from_checkpoint(path, map_location="cpu")
    trained_on = module.hparams.task["name"]
    if trained_on != task_name:
        raise ConfigError(f"distill.teacher={path}: trained on {trained_on}, not {task_name}; pass a "
                          f"teacher run of task={task_name}")
    return module


def load_teacher(cfg: Mapping, task_name: str) -> nn.Module:
    """The teacher's HF model from a run dir or ``.ckpt`` of the same task, frozen and in eval mode."""
    return _teacher_run(cfg, task_name).model.eval().requires_grad_(False)


def init_from_teacher(model: nn.Module, cfg: Mapping, task_name: str, model_name: str) -> None:
    """Copy the dense teacher's weights (encoder and task head) into ``model``, which is not compressed yet.

    Raises :class:`ConfigError` for a compressed teacher or one of another model.
    """
    module = _teacher_run(cfg, task_name)
    where = f"distill.teacher={cfg['teacher']}"
    if module.replaced:
        raise ConfigError(f"{where}: a compressed run ({len(module.replaced)} layers replaced); "
                          f"distill.init_from_teacher needs a dense run (saten=dense) of the same model")
    teacher_model = module.hparams.model.get("name")
    if teacher_model != model_name:
        raise ConfigError(f"{where}: a model={teacher_model} run; distill.init_from_teacher needs a "
                          f"model={model_name} teacher")
    model.load_state_dict(module.model.state_dict(), strict=True)


class Distiller:
    """Combines the task loss with logit and hidden-state distillation terms (see the module docstring).

    Parameters
    ----------
    teacher : nn.Module
        Frozen HF model with the student's task head.
    kd_weight, temperature, hidden_weight : float
    regression : bool
        STS-B: compare predictions by squared difference instead of KL.
    """

    def __init__(self, teacher: nn.Module, kd_weight: float, temperature: float, hidden_weight: float,
                 regression: bool = False):
        self.teacher = teacher
        self.kd_weight, self.temperature, self.hidden_weight = kd_weight, temperature, hidden_weight
        self.regression = regression

    @classmethod
    def from_config(cls, cfg: Mapping, task_name: str, regression: bool) -> Distiller:
        return cls(load_teacher(cfg, task_name), float(cfg.get("kd_weight") or 0.0),
                   float(cfg.get("temperature") or 1.0), float(cfg.get("hidden_weight") or 0.0), regression)

    @property
    def wants_hidden(self) -> bool:
        return self.hidden_weight > 0

    def to(self, device) -> Distiller:
        self.teacher.to(device)
        return self

    def loss(self, student_out, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Total loss and its parts (``task``, ``kd``, ``hidden``) for a batch the student has just run."""
        with torch.no_grad():
            teacher_out = self.teacher(**batch, output_hidden_states=self.wants_hidden)
        parts = {"task": student_out.loss}
        total = (1 - self.kd_weight) * student_out.loss
        if self.kd_weight > 0:
            parts["kd"] = self._logit_term(student_out.logits, teacher_out.logits)
            total = total + self.kd_weight * parts["kd"]
        if self.wants_hidden:
            parts["hidden"] = self._hidden_term(student_out.hidden_states, teacher_out.hidden_states,
                                                batch.get("attention_mask"))
            total = total + self.hidden_weight * parts["hidden"]
        return total, parts

    def _logit_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(student.float(), teacher.float())
        t = self.temperature
        log_student = F.log_softmax(student.float() / t, dim=-1)
        log_teacher = F.log_softmax(teacher.float() / t, dim=-1)
        return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t

    @staticmethod
    def _hidden_term(student, teacher, mask: torch.Tensor | None) -> torch.Tensor:
        if len(student) != len(teacher) or student[-1].shape != teacher[-1].shape:
            raise ConfigError(
                f"distill.hidden_weight>0: the student has {len(student)} hidden states of width "
                f"{student[-1].shape[-1]}, the teacher {len(teacher)} of {teacher[-1].shape[-1]}; "
                f"use a teacher of the same model or distill.hidden_weight=0")
        weights = None if mask is None else mask.unsqueeze(-1).float()
        terms = []
        for s, t in zip(student, teacher, strict=True):
            squared = (s.float() - t.float()).square()
            if weights is None:
                terms.append(squared.mean())
            else:
                terms.append((squared * weights).sum() / (weights.sum() * s.shape[-1]))
        return torch.stack(terms).mean()
