"""Task families of the pipeline, chosen by ``task.kind``: ``glue``, ``superglue`` and ``lm``.

Each family has its DataModule, LightningModule and config checks; :mod:`saten.train` dispatches here so
that the pipeline itself stays family-agnostic.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig

from saten.errors import ConfigError

KINDS = ("glue", "superglue", "lm")


def task_kind(task: Mapping) -> str:
    """``task.kind`` (default ``glue``), validated."""
    kind = task.get("kind") or "glue"
    if kind not in KINDS:
        raise ConfigError(f"task.kind={kind}: unknown task family; use one of {', '.join(KINDS)}")
    return kind


def module_class(kind: str):
    """The LightningModule class of a family (for ``load_from_checkpoint``)."""
    from saten.lit import CausalLM, GlueClassifier, SuperGlueClassifier

    return {"glue": GlueClassifier, "superglue": SuperGlueClassifier, "lm": CausalLM}[kind]


def check_task_config(cfg: DictConfig) -> None:
    """The task's main metric exists for its family; LoRA / distillation only where supported; test files."""
    from saten.lit.lora import check_lora_config, lora_enabled

    kind = task_kind(cfg.task)
    lora = cfg.get("lora")
    if lora_enabled(lora):
        if kind != "lm":
            raise ConfigError(f"lora=lora: LoRA is implemented for task.kind=lm only, not {kind}; use "
                              f"lora=none")
        check_lora_config(lora)
    from saten.distill import uses_teacher

    if kind == "lm" and uses_teacher(cfg.get("distill"), cfg.get("calibration")):
        raise ConfigError(f"distill.teacher={cfg.distill.get('teacher')}: distillation, init_from_teacher "
                          f"and calibration.fisher=teacher are implemented for classification tasks, not "
                          f"task.kind=lm; use distill=none and calibration.fisher=model")
    if kind != "glue" and cfg.get("test_predictions"):
        raise ConfigError(f"test_predictions=true: submission files exist for GLUE only, not task.kind="
                          f"{kind}; set test_predictions=false")
    if kind == "glue":
        from saten.data.glue import get_task
        from saten.data.metrics import metric_keys

        task = get_task(cfg.task.name)
        keys = {"loss", *(k for split in task.eval_splits for k in metric_keys(task.name, split))}
        if len(task.eval_splits) > 1:
            keys |= {"loss_m", "loss_mm"}
    elif kind == "superglue":
        from saten.data.superglue import get_task

        keys = {"loss", *get_task(cfg.task.name).metric_keys}
    else:
        keys = {"perplexity", "loss", "tokens"}
    if cfg.task.metric not in keys:
        raise ConfigError(f"task.metric={cfg.task.metric}: {cfg.task.name} logs no such metric; use one of "
                          f"{', '.join(sorted(keys))}")


def build_datamodule(cfg: DictConfig, tokenizer, task: Mapping | None = None):
    """The DataModule of ``cfg.data`` for ``task`` (default ``cfg.task``; eval-only runs pass the run's)."""
    task = task if task is not None else cfg.task
    kind = task_kind(task)
    target = str(cfg.data.get("_target_", ""))
    expected = {"glue": "GlueDataModule", "superglue": "SuperGlueDataModule", "lm": "LMDataModule"}[kind]
    if not target.endswith(expected):
        raise ConfigError(f"data._target_={target}: task {task['name']} (kind {kind}) needs {expected}; drop "
                          f"the data= override (the task file picks its data group)")
    if kind == "glue":
        from saten.data.glue import GlueDataModule

        return GlueDataModule.from_config(cfg.data, tokenizer, task=task["name"], seed=cfg.seed)
    if kind == "superglue":
        from saten.data.superglue import SuperGlueDataModule

        return SuperGlueDataModule.from_config(cfg.data, tokenizer, task=task["name"], seed=cfg.seed)
    from saten.data.lm import LMDataModule

    return LMDataModule.from_config(cfg.data, tokenizer, seed=cfg.seed)
