"""LoRA on a (frozen) compressed model via PEFT: the reference's LLaMA protocol.

The compressed layers (:class:`saten.SatenLinear`, :class:`saten.SVDLinear`) are registered with PEFT as
custom LoRA targets, so the adapter wraps them directly: ``y = Saten(x) + B(A(dropout(x))) * alpha / r``.
The model therefore keeps its compressed form (cores, kept values, mask) and only ``lora_A`` / ``lora_B``
train; PEFT freezes every other parameter. This computes exactly what the reference computes after merging a
frozen Saten layer into a plain frozen Linear, and the saved weights stay compressed.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from saten.errors import ConfigError
from saten.layers import SatenLinear
from saten.lowrank import SVDLinear

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_enabled(lora_cfg: Mapping | None) -> bool:
    """True when the ``lora`` config group asks for adapters."""
    return bool(lora_cfg) and bool(lora_cfg.get("enabled", False))


def _lora_linear_class():
    from peft.tuners.lora import Linear as LoraLinear

    class SatenLoraLinear(LoraLinear):
        """PEFT's LoRA Linear around a compressed layer (its in/out sizes are read directly)."""

        def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
            return module.in_features, module.out_features

    return SatenLoraLinear


def check_lora_config(lora_cfg: Mapping) -> None:
    """Raise :class:`ConfigError` for a LoRA value that cannot work."""
    for key in ("r", "alpha"):
        value = lora_cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"lora.{key}={value}: must be an integer >= 1 (the reference: r=8, alpha=32)")
    dropout = lora_cfg.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"lora.dropout={dropout}: must lie in [0, 1) (the reference: 0.05)")
    targets = lora_cfg.get("target_modules")
    if not targets or not (isinstance(targets, str) or all(isinstance(t, str) for t in targets)):
        raise ConfigError(f"lora.target_modules={targets}: give a list of module name suffixes, e.g. "
                          f"[{', '.join(LLAMA_TARGETS)}]")


def apply_lora(model: nn.Module, lora_cfg: Mapping, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; compressed layers are valid targets.

    Parameters
    ----------
    model : nn.Module
        A (compressed) transformers model.
    lora_cfg : Mapping
        The ``lora`` config group: ``r``, ``alpha``, ``dropout``, ``target_modules`` (name suffixes or a
        regex string).
    task_type : str
        PEFT task type (``CAUSAL_LM`` or ``SEQ_CLS``).

    Returns
    -------
    peft.PeftModel
        Only the LoRA matrices (and, for ``SEQ_CLS``, the head) are trainable.
    """
    from peft import LoraConfig, get_peft_model

    check_lora_config(lora_cfg)
    targets = lora_cfg["target_modules"]
    config = LoraConfig(r=int(lora_cfg["r"]), lora_alpha=int(lora_cfg["alpha"]),
                        lora_dropout=float(lora_cfg.get("dropout", 0.0)), bias="none", task_type=task_type,
                        target_modules=targets if isinstance(targets, str) else [str(t) for t in targets])
    lora_linear = _lora_linear_class()
    config._register_custom_module({SatenLinear: lora_linear, SVDLinear: lora_linear})
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"lora.target_modules={targets}: {first}; name modules of this model") from None


def lora_parameter_count(model: nn.Module) -> int:
    """Number of LoRA adapter parameters in ``model``."""
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
