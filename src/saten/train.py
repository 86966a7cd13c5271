"""The experiment pipeline behind ``run.py``: config -> model (compressed) -> data -> Trainer -> run dir.

``run(cfg)`` trains (or, with ``train=false``, only evaluates) and returns the run summary; see
``conf/config.yaml`` for the config and the README section "Configuration keys" for every key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from saten.errors import ConfigError
from saten.resume import match_structure
from saten.resume import resolve as resolve_resume
from saten.validate import check_config, check_model_plan

log = logging.getLogger(__name__)
PREDICTIONS_DIR = "predictions"


def metric_mode(monitor: str) -> str:
    """``min`` for a monitored loss or perplexity, ``max`` for any other metric (resolver ``metric_mode``)."""
    last = str(monitor).rsplit("/", 1)[-1]
    return "min" if "loss" in last or "perplexity" in last else "max"


def run_tag(choice: str | None, saten: Mapping, calibration: Mapping | None = None,
            distill: Mapping | None = None, schedule: Mapping | None = None,
            recover: Mapping | None = None) -> str:
    """Short name of a compression setting for run dirs and W&B (OmegaConf resolver ``run_tag``).

    Examples: ``saten_u_d0.1_e0.85``, ``saten_24_nm2-4_e1.0``, ``tt_e0.6``, ``svd_r0.33``, ``dense``;
    ``_t0.33`` for a target ratio, ``_act``/``_sens`` for calibration, ``_kd`` for distillation,
    ``_fromteacher`` for a start from the teacher's weights,
    ``_prog0.5`` for progressive tightening from ε 0.5, ``_rec300`` for 300 recovery steps
    (``_rec300task`` on the task's own examples), so that runs of different recipes started in the same
    second never share a folder.
    """
    method = saten.get("method")
    parts = [str(choice or method)]
    if method == "saten":
        nm = saten.get("nm") or []
        parts.append(f"nm{nm[0]}-{nm[1]}" if saten.get("sparsity") == "nm" and len(nm) == 2
                     else f"d{saten.get('density')}")
    if method in ("saten", "tt"):
        parts.append(f"e{saten.get('eps')}")
        if saten.get("max_rank") is not None:
            parts.append(f"k{saten.get('max_rank')}")
    if method == "svd":
        parts.append(f"r{saten.get('svd_ratio')}")
    if saten.get("embeddings"):
        parts.append("emb")
    if saten.get("target_ratio") is not None:
        parts.append(f"t{saten.get('target_ratio')}")
    from saten.distill import distill_enabled

    calibration = calibration or {}
    if calibration.get("samples") and calibration.get("activation_aware"):
        parts.append(f"act{calibration.get('alpha')}")
    if calibration.get("samples") and calibration.get("sensitivity"):
        parts.append("sens")
    if distill_enabled(distill):
        parts.append("kd")
    if (distill or {}).get("init_from_teacher"):
        parts.append("fromteacher")
    from saten.progressive import schedule_enabled

    if schedule_enabled(schedule):
        parts.append(f"prog{schedule.get('start_eps')}")
    if (recover or {}).get("steps"):
        from saten.recover_inputs import TASK_CORPUS

        parts.append(f"rec{recover.get('steps')}" + ("task" if recover.get("corpus") == TASK_CORPUS else ""))
    return "_".join(parts)


def safe_dirname(name: str, max_length: int = 200) -> str:
    """A folder-name-safe, bounded version of ``name`` (resolver ``safe_dirname``; multirun subdirs).

    Slashes become ``_``; a name longer than ``max_length`` is cut and suffixed with a short hash so that
    different override sets still get different folders.
    """
    import hashlib

    name = str(name).replace("/", "_").replace("\\", "_")
    if len(name) <= max_length:
        return name
    return f"{name[: max_length - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    """Register the OmegaConf resolvers the configs use (idempotent)."""
    import saten.data  # noqa: F401  (registers saten.glue_dir)

    OmegaConf.register_new_resolver("metric_mode", metric_mode, replace=True)
    OmegaConf.register_new_resolver("run_tag", run_tag, replace=True)
    OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)


register_resolvers()


def load_for_eval(cfg: DictConfig):
    """The model to evaluate (``train=false``): a run dir via :func:`saten.lit.load_run`, or a ``.ckpt``."""
    from saten.lit import load_run
    from saten.reload import load_checkpoint

    path = Path(str(cfg.ckpt_path))
    if path.is_dir():
        module = load_run(path)
    else:
        module = load_checkpoint(path)  # with the checkpoint's ranks, whatever a fresh compression gives
    trained_on = module.hparams.task["name"]
    if trained_on != cfg.task.name:
        raise ConfigError(f"task={cfg.task.name}: ckpt_path={path} was trained on {trained_on}; add "
                          f"task={trained_on}")
    return module


def instantiate_loggers(cfg: DictConfig) -> list:
    """Loggers of the ``logger`` group (W&B gets the task, model and method as extra tags)."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if not isinstance(logger_cfg, Mapping) or "_target_" not in logger_cfg:
            continue
        kwargs = {}
        if str(logger_cfg["_target_"]).endswith("WandbLogger"):
            tags = list(logger_cfg.get("tags") or [])
            extra = [cfg.task.name, cfg.model.get("name"), cfg.saten.get("method")]
            kwargs["tags"] = list(dict.fromkeys([*tags, *(str(t) for t in extra if t)]))
        loggers.append(instantiate(logger_cfg, **kwargs))
        log.debug("logger %s: %s", name, type(loggers[-1]).__name__)
    return loggers


def instantiate_callbacks(cfg: DictConfig, has_logger: bool) -> list:
    """Callbacks of the ``callbacks`` group.

    Left out: the LR monitor when there is no logger, progress bars when
    ``trainer.enable_progress_bar=false``.
    """
    callbacks = []
    progress_bar = cfg.trainer.get("enable_progress_bar", True) is not False
    for callback_cfg in (cfg.get("callbacks") or {}).values():
        if not isinstance(callback_cfg, Mapping) or "_target_" not in callback_cfg:
            continue
        target = str(callback_cfg["_target_"])
        if (not has_logger and target.endswith("LearningRateMonitor")) or (
                not progress_bar and target.endswith("ProgressBar")):
            continue
        callbacks.append(instantiate(callback_cfg))
    return callbacks


def resolved_config(cfg: DictConfig) -> dict:
    """The run config as a resolved plain dict, without the ``hydra`` node (present in composed configs)."""
    return {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            for key, node in ((k, cfg[k]) for k in cfg if k != "hydra")}


@rank_zero_only
def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """``config.yaml`` (resolved, without the hydra node) and ``provenance.json`` into the run dir."""
    from saten.provenance import write_provenance

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved_config(cfg)), run_dir / "config.yaml")
    write_provenance(run_dir)


def check_test_files(datamodule) -> None:
    """``test_predictions=true`` needs the test TSVs when reading local files."""
    if datamodule.glue_dir is None:
        return
    for split in datamodule.test_split_names:
        path = Path(datamodule.glue_dir) / datamodule.task.dir / datamodule.task.splits[split]
        if not path.is_file():
            raise ConfigError(f"test_predictions=true: {path} is missing; set test_predictions=false for "
                              f"{datamodule.task.name} or point data.glue_dir to a folder with its test "
                              f"split")


def write_test_predictions(module, datamodule, run_dir: Path) -> list[Path]:
    """Predict the unlabeled test split(s) and write GLUE submission files to ``<run dir>/predictions``."""
    from saten.data.glue import write_glue_predictions

    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, callbacks=[], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(run_dir))
    datamodule.setup("predict")
    outputs = trainer.predict(module, dataloaders=datamodule.predict_dataloader())
    names = datamodule.test_split_names
    if len(names) == 1:
        outputs = [outputs]
    out_dir = run_dir / PREDICTIONS_DIR
    return [write_glue_predictions(datamodule.task, torch.cat(batches), out_dir, split=split)
            for split, batches in zip(names, outputs)]


def close_loggers(loggers: list) -> None:
    """Finish W&B runs so that the next job of a multirun starts a new one."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


def run(cfg: DictConfig) -> dict:
    """Train (or evaluate) one configuration and return its summary (also in ``<run dir>/summary.json``).

    Raises
    ------
    ConfigError
        For a bad config value (caught by ``run.py``: one line on stderr, exit code 2).
    """
    from saten.calibration import calibration_batches
    from saten.distill import resolve_teacher
    from saten.families import build_datamodule, task_kind
    from saten.lit import build_module
    from saten.models import load_tokenizer
    from saten.progressive import ProgressiveTightening, schedule_enabled
    from saten.recover import recover_enabled, recover_run

    check_config(cfg)
    if cfg.train:
        check_model_plan(cfg)  # on an empty (meta) model: no weights loaded yet
    resume = resolve_resume(cfg)
    if cfg.train:  # distill.teacher=auto -> a run dir, recorded in config.yaml (a resumed run keeps its own)
        resolve_teacher(cfg, resume.run_dir if resume else None)
    if resume is not None and resume.run_dir is not None:  # ckpt_path=last / <run dir>: continue there
        cfg.paths.output_dir = str(resume.run_dir)
    run_dir = Path(cfg.paths.output_dir)
    if resume is None or resume.run_dir is None:
        write_run_files(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.train:  # data errors (missing files, malformed rows) surface before the model is loaded
        datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
        datamodule.setup("validate" if cfg.trainer.get("max_epochs") == 0 else "fit")
        module = build_module(cfg, calibration_batches(datamodule, cfg.get("calibration")), fresh=True)
        if resume is not None:
            match_structure(module, resume.ckpt)
        elif recover_enabled(cfg.get("recover")):  # a resumed run's checkpoint holds the recovered values
            recover_run(module, cfg, datamodule)
    else:
        module = load_for_eval(cfg)
        datamodule = build_datamodule(cfg, load_tokenizer(module.hparams.model), task=module.hparams.task)
    train_free = cfg.train and cfg.trainer.get("max_epochs") == 0  # compress and evaluate only
    if cfg.test_predictions:
        check_test_files(datamodule)
    loggers = instantiate_loggers(cfg)
    try:
        callbacks = instantiate_callbacks(cfg, has_logger=bool(loggers))
        if schedule_enabled(cfg.get("schedule")):
            callbacks.append(ProgressiveTightening(cfg.schedule.steps, cfg.schedule.end))
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        for logger in loggers:
            logger.log_hyperparams(resolved_config(cfg))
        if cfg.train and not train_free:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume.ckpt) if resume else None)
            if not trainer.fast_dev_run:
                best = getattr(trainer.checkpoint_callback, "best_model_path", "")
                trainer.validate(module, datamodule=datamodule, ckpt_path=best or None)
        else:
            trainer.validate(module, datamodule=datamodule)
        if task_kind(cfg.task) == "lm" and not trainer.fast_dev_run:
            trainer.test(module, datamodule=datamodule)  # the weights validate() evaluated
        if cfg.test_predictions and trainer.is_global_zero and not trainer.fast_dev_run:
            write_test_predictions(module, datamodule, run_dir)
        summaries = [c.summary for c in callbacks if type(c).__name__ == "RunSummary"]
        summary = summaries[0] if summaries else {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:
        close_loggers(loggers)
    return summary


def optimized_metric(cfg: DictConfig, summary: Mapping) -> float | None:
    """The value a sweep optimizes: ``best/<task.metric>`` (evaluation-only runs: ``val/<task.metric>``);
    ``objective=metric_per_ratio`` divides it by the model's parameter ratio (``model_ratio``)."""
    for key in (f"best/{cfg.task.metric}", f"val/{cfg.task.metric}"):
        if summary.get(key) is not None:
            per_ratio = cfg.get("objective") == "metric_per_ratio"
            return float(summary[key]) / (float(summary.get("model_ratio") or 1.0) if per_ratio else 1.0)
    return None
