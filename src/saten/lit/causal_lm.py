"""LightningModule for causal language modelling with a Saten-compressed model: perplexity and fine-tuning.

Three protocols, all from the same module: (a) Saten fine-tuning (cores, kept values and the rest train, as
for BERT); (b) LoRA on the frozen compressed model (``saten.freeze=true lora=lora``, the reference's LLaMA
protocol); (c) training-free (``trainer.max_epochs=0``: compress, then evaluate validation and test).
Evaluation logs ``val/perplexity``, ``val/loss`` (mean NLL per predicted token) and ``val/tokens``, and the
same under ``test/``; see :mod:`saten.data.lm` for the protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import lightning as L
import torch

from saten.data.lm import token_nll
from saten.errors import ConfigError
from saten.lit.classification import to_plain
from saten.lit.lora import apply_lora, lora_enabled, lora_parameter_count
from saten.lit.optim import TrainingHooks

LOWER_IS_BETTER = ("perplexity", "loss")


class CausalLM(TrainingHooks, L.LightningModule):
    """Pretrained causal LM, compressed with ``saten.compress``, optionally with LoRA adapters.

    The model is loaded, compressed and (with ``lora``) wrapped in ``__init__`` (deterministic), so
    ``load_from_checkpoint`` and :func:`saten.lit.load_run` rebuild the exact structure before loading.

    Parameters
    ----------
    model : Mapping
        The ``model`` config group (a LLaMA-architecture model).
    task : Mapping
        The ``task`` config group (``name``, ``metric``: ``perplexity`` or ``loss``).
    saten : Mapping
        The ``saten`` config group.
    tt_shape : Mapping, optional
        The ``tt_shape`` config group.
    optim : Mapping, optional
        The ``optim`` config group (training only).
    lora : Mapping, optional
        The ``lora`` config group (``enabled: false`` or absent: no adapters).
    compile : bool
        ``torch.compile`` the model in place.

    Attributes
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
    replaced : list of str
        Module names that ``compress`` replaced (names in the model before LoRA wrapping).
    best, last_metrics, test_metrics : dict of str to float
        Best validation epoch, latest validation and latest test metrics (keys without prefix).
    """

    def __init__(self, model: Mapping, task: Mapping, saten: Mapping, tt_shape: Mapping | None = None,
                 optim: Mapping | None = None, lora: Mapping | None = None, compile: bool = False,
                 calibration: Mapping | None = None, calibration_batches: list | None = None,
                 schedule: Mapping | None = None):
        super().__init__()
        from saten.callbacks import compression_report
        from saten.models import load_model
        from saten.progressive import compress_for_training

        model, task, saten, tt_shape, optim, lora, calibration, schedule = map(
            to_plain, (model, task, saten, tt_shape, optim, lora, calibration, schedule))
        self.save_hyperparameters({"model": model, "task": task, "saten": saten, "tt_shape": tt_shape,
                                   "optim": optim, "lora": lora, "compile": bool(compile),
                                   "calibration": calibration, "schedule": schedule})
        self.metric_name = str(task.get("metric") or "perplexity")
        if self.metric_name not in (*LOWER_IS_BETTER, "tokens"):
            raise ConfigError(f"task.metric={self.metric_name}: {task['name']} logs perplexity, loss and "
                              f"tokens; use task.metric=perplexity")
        start = time.perf_counter()
        self.model = load_model(model, head="causal_lm")
        self.replaced, self.progressive = compress_for_training(self.model, saten, tt_shape, calibration,
                                                                calibration_batches, schedule)
        self.compress_seconds = time.perf_counter() - start
        self.compression_report: dict | None = None
        if lora_enabled(lora):
            report = compression_report(self)  # the figures describe the compressed model, adapters apart
            self.model = apply_lora(self.model, lora)
            report["lora_params"] = lora_parameter_count(self.model)
        self.model.train()
        if compile:
            self.model.compile()
        self._sums: dict[str, list[torch.Tensor]] = {"val": [], "test": []}
        self.best: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg: Mapping, calibration_batches: list | None = None) -> CausalLM:
        """Build from a full run config (model, task, saten, tt_shape, optim, lora, compile, calibration)."""
        return cls(model=cfg["model"], task=cfg["task"], saten=cfg["saten"], tt_shape=cfg.get("tt_shape"),
                   optim=cfg.get("optim"), lora=cfg.get("lora"), compile=bool(cfg.get("compile", False)),
                   calibration=cfg.get("calibration"), calibration_batches=calibration_batches,
                   schedule=cfg.get("schedule"))

    # ---- steps ---------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]):
        """Logits of a batch of chunks (``input_ids``, ``attention_mask``)."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch, batch_idx):
        nll, count = token_nll(self(batch), batch["labels"])
        loss = (nll / count.clamp(min=1)).float()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        nll, count = token_nll(self(batch), batch["labels"])
        self._sums[stage].append(torch.stack([nll.detach(), count]))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._sums["val"] = []

    def on_test_epoch_start(self) -> None:
        self._sums["test"] = []

    def _perplexity(self, stage: str) -> dict[str, float] | None:
        """``loss`` (mean NLL per predicted token), ``perplexity`` = exp(loss) and ``tokens`` of a stage."""
        if not self._sums[stage]:
            return None
        total, count = torch.stack(self._sums[stage]).sum(dim=0)
        if self.trainer.world_size > 1:
            total, count = self.all_gather(total).sum(), self.all_gather(count).sum()
        loss = float(total / count)
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": float(count)}

    def on_validation_epoch_end(self) -> None:
        metrics = self._perplexity("val")
        if metrics is None:
            return
        self.last_metrics = dict(metrics)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True)
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        value, best = metrics[self.metric_name], self.best.get(self.metric_name)
        if best is None or value < best:
            self.best = dict(metrics, epoch=float(self.current_epoch))
        self.log_dict({f"best/{k}": v for k, v in self.best.items()}, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        metrics = self._perplexity("test")
        if metrics is not None:
            self.test_metrics = dict(metrics)
            self.log_dict({f"test/{k}": v for k, v in metrics.items()}, sync_dist=True)

