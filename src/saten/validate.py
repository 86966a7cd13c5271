"""Up-front checks of a run config, before any weights are loaded: a typo costs a second, not an hour.

- :func:`check_group_choices` and :func:`check_overrides` run on the command line, before Hydra composes:
  ``task=mrpcx`` names the valid files of ``conf/task/``; ``saten.densty=0.1`` is an unknown key.
- :func:`check_config` checks the pipeline's own keys (seed, train / ckpt_path, optim, saten, tt_shape, task).
- :func:`check_model_plan` builds the model empty on the meta device (layer names and shapes from its
  config, no weights) and checks what compression will do to it: targets that match no Linear, an N:M
  pattern whose M does not divide a layer's inputs, explicit TT shapes whose product is not the layer's,
  per-layer overrides.

Every problem is a :class:`saten.errors.ConfigError` whose message is one line,
``<key>=<value>: <what is wrong>; <fix>``; ``run.py`` prints it as ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from saten.errors import ConfigError

__all__ = ["check_config", "check_group_choices", "check_model_plan", "check_overrides", "empty_model"]

# command-line groups whose files are not under conf/ (Hydra's own, plugins)
_SKIP_GROUPS = {"hydra", "local"}


def check_group_choices(argv: Sequence[str], conf_dir: str | Path) -> None:
    """``group=name`` overrides must name a file ``conf/<group>/<name>.yaml`` (sweeps: every name).

    Raises
    ------
    ConfigError
        ``task=mrpcx: no such task; choose one of cola, mnli, ...``.
    """
    conf_dir = Path(conf_dir)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if "." in key or "/" in key or key in _SKIP_GROUPS or not (conf_dir / key).is_dir():
            continue
        if any(c in value for c in "()[]{}$*") or value in ("", "null"):  # sweep functions, interpolations
            continue
        options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for name in (v.strip() for v in value.split(",")):
            if name not in options:
                raise ConfigError(f"{key}={name}: no such {key} (no conf/{key}/{name}.yaml); choose one of "
                                  f"{', '.join(options)}")


def check_overrides(argv: Sequence[str], conf_dir: str | Path, config_name: str = "config") -> None:
    """Compose the config once (first value of each sweep) to turn Hydra's key errors into one line.

    An unknown key (``saten.densty=0.1``), a ``+key`` that exists and a ``~key`` that does not raise a
    :class:`ConfigError`; any other composition problem is left to Hydra's own report.
    """
    import re

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    own_config = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
    if any(a.startswith(own_config) for a in argv):
        return
    given = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    try:
        parsed = OverridesParser.create().parse_overrides(given)
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return
    overrides = [_first_value(o) for o in parsed]
    overrides = [o for o in overrides if o is not None]
    if GlobalHydra.instance().is_initialized():
        return
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except ConfigCompositionException as error:
        message = str(error)
        quoted = re.search(r"'([^']+)'", message)
        key = quoted.group(1) if quoted else ""
        arg = next((a for a in given if a.lstrip("+~").split("=", 1)[0] == key), key)
        if message.startswith("Could not override"):
            raise ConfigError(f"{arg}: no such key in the config; fix the spelling (the README lists every "
                              f"key), or add a new key with +{arg}") from None
        if message.startswith("Could not append"):
            raise ConfigError(f"{arg}: {key} already exists; drop the + ({arg.lstrip('+')})") from None
        if message.startswith("Could not delete"):
            raise ConfigError(f"{arg}: {key} does not exist, nothing to delete; fix the spelling") from None
    finally:
        GlobalHydra.instance().clear()


def _first_value(override) -> str | None:
    """An override as text, a sweep reduced to its first value (None for intervals: Optuna's to choose)."""
    if not override.is_sweep_override():
        return override.input_line
    try:
        return f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
    except Exception:  # noqa: BLE001 - interval sweeps cannot be enumerated
        return None


def check_config(cfg: DictConfig) -> None:
    """Up-front checks of the pipeline's own keys; one-line :class:`ConfigError` on a bad value."""
    from saten.lit.optim import check_optim_config

    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed}: must be an integer")
    if cfg.get("objective", "metric") not in ("metric", "metric_per_ratio"):
        raise ConfigError(f"objective={cfg.objective}: unknown; use metric or metric_per_ratio")
    ckpt = cfg.ckpt_path
    if not cfg.train:
        if ckpt is None:
            raise ConfigError("ckpt_path=null: train=false evaluates a trained model; pass "
                              "ckpt_path=<run dir or .ckpt file>")
        if str(ckpt) == "last":
            raise ConfigError("ckpt_path=last: resumes training (train=true); to evaluate pass "
                              "ckpt_path=<run dir or .ckpt>")
    if ckpt is not None and str(ckpt) != "last" and not Path(str(ckpt)).exists():
        raise ConfigError(f"ckpt_path={ckpt}: no such file or directory; pass a run dir (with "
                          f"model.safetensors or checkpoints/last.ckpt), a Lightning .ckpt file, or last")
    if cfg.train:
        from saten.models import model_device

        model_device(cfg.model)
        check_optim_config(cfg.optim)
        check_method_config(cfg)


def check_method_config(cfg: DictConfig) -> None:
    """Validate the saten, tt_shape, task and lora groups (values only; see :func:`check_model_plan`)."""
    from saten.calibration import check_calibration_config
    from saten.config import SatenConfig, TTShapeConfig
    from saten.distill import check_distill_config
    from saten.families import check_task_config

    matched = cfg.get("matched")  # a method_preset reads its knobs from matched.<model>
    if matched is not None and cfg.model.name not in matched:
        raise ConfigError(f"method_preset: no matched values for model={cfg.model.name} in "
                          f"conf/method_preset/matched.yaml; measure them with python "
                          f"benchmarks/matched_ratios.py --model {cfg.model.name}, or pick saten=<file>")
    SatenConfig.from_any(cfg.saten, warn=False)
    TTShapeConfig.from_any(cfg.tt_shape)
    check_task_config(cfg)
    check_calibration_config(cfg.get("calibration"), cfg.saten)
    check_distill_config(cfg.get("distill"), teacher_must_exist=True, calibration=cfg.get("calibration"))
    from saten.progressive import check_schedule_config

    check_schedule_config(cfg.get("schedule"), cfg.saten, cfg.trainer.get("strategy"), cfg.get("lora"))
    from saten.families import task_kind
    from saten.recover import check_recover_config

    check_recover_config(cfg.get("recover"), cfg.saten, cfg.get("schedule"), task_kind(cfg.task))


def empty_model(model_cfg: Mapping, task_cfg: Mapping) -> torch.nn.Module:
    """The run's model with its task head, built from its config on the meta device (no weights, no memory).

    Offline with a hub model that is not cached, this raises the one-line ConfigError of
    :func:`saten.models.model_config`, naming the offline alternatives.
    """
    from saten.families import task_kind
    from saten.models import HEADS, model_config

    config = model_config(model_cfg)
    head = "causal_lm" if task_kind(task_cfg) == "lm" else "sequence_classification"
    if head == "causal_lm" and config.model_type == "bert":
        raise ConfigError(f"model={model_cfg.get('name')}: BERT is an encoder and has no causal-LM head; "
                          f"use a llama model (model=smollm2_135m or model=tiny_llama)")
    if head == "sequence_classification" and task_cfg.get("num_labels"):
        config.num_labels = int(task_cfg["num_labels"])
    with torch.device("meta"):
        return HEADS[head].from_config(config)


def check_model_plan(cfg: DictConfig, model: torch.nn.Module | None = None) -> list[str]:
    """Check the compression of ``cfg`` against the model's layers; return the names it will compress.

    Parameters
    ----------
    cfg : DictConfig
        The run config (``model``, ``task``, ``saten``, ``tt_shape``).
    model : nn.Module, optional
        The model to check against; default :func:`empty_model` (meta device).
    """
    from saten.compress import _override_for, _shape_for, find_targets
    from saten.config import SatenConfig, TTShapeConfig

    saten = SatenConfig.from_any(cfg.saten, warn=False)
    shape_cfg = TTShapeConfig.from_any(cfg.get("tt_shape"))
    if model is None:
        model = empty_model(cfg.model, cfg.task)
    if saten.method == "dense":
        return []
    try:
        names = find_targets(model, saten.targets, saten.exclude)
    except ConfigError as err:
        if "matches no" not in str(err):
            raise
        example = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
        raise ConfigError(f"saten.targets={saten.targets}: matches no Linear module of this "
                          f"{model.config.model_type} model (exclude={saten.exclude}); use a regex that "
                          f"full-matches names like {example}, a list of name suffixes, or null") from None
    for pattern in saten.overrides or {}:
        if not any(_matches_any(name, pattern) for name in names):
            raise ConfigError(f"saten.overrides.{pattern}: matches no compressed layer; names look like "
                              f"{names[0]}; fix the pattern (regex full match or name suffix)")
    for pattern, factors in (shape_cfg.shapes or {}).items():
        ok = (isinstance(factors, Sequence) and len(factors) == 2
              and all(isinstance(f, Sequence) and f and all(isinstance(x, int) and x >= 1 for x in f)
                      for f in factors))
        if not ok:
            raise ConfigError(f"tt_shape.shapes.{pattern}={factors}: not [[n1, n2, ...], [m1, m2, ...]]; "
                              f"give the input and output factors as two lists of positive integers")
        if not any(_matches_any(name, pattern) for name in names):
            raise ConfigError(f"tt_shape.shapes.{pattern}: matches no compressed layer; names look like "
                              f"{names[0]}; fix the pattern")
    for name in names:
        linear = model.get_submodule(name)
        layer = _layer_config(saten, name, _override_for(name, saten.overrides))
        if layer.method in ("saten", "tt"):
            _shape_for(name, linear, shape_cfg)  # explicit factors must multiply to the layer's size
        if layer.method == "saten" and layer.sparsity == "nm" and linear.in_features % layer.nm[1]:
            raise ConfigError(f"saten.nm={layer.nm}: {name} has {linear.in_features} inputs, not divisible "
                              f"by M={layer.nm[1]}; exclude the layer (saten.exclude) or pick another M")
    return names


def _matches_any(name: str, pattern: str) -> bool:
    from saten.compress import _matches

    return _matches(name, pattern) or _matches(name, [pattern])


def _layer_config(saten, name: str, override: Mapping):
    """The layer's config with its override applied and validated (errors name the override key)."""
    if not override:
        return saten
    known = {f.name for f in dataclasses.fields(saten)} - {"dropped"}
    for key in override:
        if key not in known:
            raise ConfigError(f"saten.overrides (layer {name}).{key}: unknown key; use eps, density, "
                              f"max_rank, nm or svd_ratio")
    layer = saten.for_layer(**override)
    try:
        layer.validate()
    except ConfigError as err:
        raise ConfigError(f"saten.overrides (layer {name}): {err}") from None
    return layer
