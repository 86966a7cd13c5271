"""Resume a killed run: ``python run.py <same overrides> ckpt_path=last``.

- :class:`LastCheckpoint` (``callbacks.last_checkpoint``) rewrites ``<run dir>/checkpoints/last.ckpt`` after
  every epoch with the full training state (compressed layers and their masks, optimizer, scheduler, loops,
  callbacks), atomically, and deletes it when the run completes (``keep=true`` keeps it).
- :class:`EpochSeed` (``callbacks.epoch_seed``) reseeds dropout and the training shuffle at every epoch start
  from (seed, epoch), so an epoch's randomness does not depend on whether the run was interrupted before it.
- :func:`resolve` turns ``ckpt_path`` into the checkpoint to resume: ``last`` (the newest run under
  ``paths.log_dir`` with the same model, task, compression, optimizer and seed that holds a
  ``last.ckpt``), a run dir, or a full ``.ckpt`` file. With ``last`` or a run dir the run continues in that
  run dir, so its best checkpoint and summary are the whole run's. At most the interrupted epoch is lost.
- :func:`match_structure` gives the freshly compressed module the checkpoint's ranks and mask sizes before
  Lightning loads the state (:mod:`saten.reload`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from saten.errors import ConfigError
from saten.runs import newest_runs

__all__ = ["EpochSeed", "LastCheckpoint", "Resume", "match_structure", "resolve"]

log = logging.getLogger(__name__)
LAST = "last.ckpt"
# config groups that must be equal for ckpt_path=last to pick a run
SAME = ("model", "task", "saten", "tt_shape", "lora", "optim", "seed")


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: the full training state after every epoch, removed when the run completes.

    Parameters
    ----------
    dirpath : path
        Folder of the checkpoint (``<run dir>/checkpoints``).
    keep : bool
        Keep ``last.ckpt`` after a completed run (default: delete it; only a killed run needs it).
    every_n_epochs : int
        Save after every n-th epoch.
    """

    def __init__(self, dirpath: str | Path, keep: bool = False, every_n_epochs: int = 1):
        super().__init__(dirpath=dirpath, filename=LAST.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                         save_weights_only=False, every_n_epochs=every_n_epochs, enable_version_counter=False)
        self.keep = bool(keep)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Write to a temporary file first: a kill during the write leaves the previous checkpoint intact."""
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero and os.path.exists(partial):
            os.replace(partial, filepath)
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("last_checkpoint")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.keep or not trainer.is_global_zero or not self.best_model_path:
            return
        Path(self.best_model_path).unlink(missing_ok=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for (seed, epoch)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class EpochSeed(Callback):
    """At every epoch start, reseed torch (dropout) and the train loader's shuffle from ``(seed, epoch)``.

    The shuffle gets its own generator (``sampler.generator``), so the permutation does not depend on how
    many numbers the loader's generator gave out before (a resumed run creates its loader anew). Loaders
    with a ``DistributedSampler`` are left to Lightning, which sets their epoch.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = epoch_seed(self.seed, trainer.current_epoch)
        torch.manual_seed(value)
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            sampler = getattr(loader, "sampler", None)
            if getattr(sampler, "generator", None) is not None:
                sampler.generator = torch.Generator().manual_seed(value)


@dataclass
class Resume:
    """A checkpoint to resume from; ``run_dir``: continue in that run dir (None: in this run's own dir)."""

    ckpt: Path
    run_dir: Path | None = None


def resolve(cfg: DictConfig) -> Resume | None:
    """The checkpoint that ``ckpt_path`` asks to resume (``train=true``), checked; None without one."""
    ckpt = cfg.get("ckpt_path")
    if not cfg.train or ckpt is None:
        return None
    if str(ckpt) == "last":
        run_dir = find_last(cfg)
        resume = Resume(run_dir / "checkpoints" / LAST, run_dir)
    elif Path(str(ckpt)).is_dir():
        run_dir = Path(str(ckpt))
        if not (run_dir / "checkpoints" / LAST).is_file():
            raise ConfigError(f"ckpt_path={ckpt}: no checkpoints/{LAST} in this run dir (it completed, or "
                              f"ran without callbacks.last_checkpoint); evaluate it with train=false or pass "
                              f"a .ckpt file that has the optimizer state")
        resume = Resume(run_dir / "checkpoints" / LAST, run_dir)
    else:
        resume = Resume(Path(str(ckpt)))
    state = torch.load(resume.ckpt, map_location="cpu", mmap=True, weights_only=False)
    if "optimizer_states" not in state:
        raise ConfigError(f"ckpt_path={ckpt}: a weights-only checkpoint cannot resume training; evaluate it "
                          f"with train=false, or resume from <run dir>/checkpoints/{LAST} (ckpt_path=last)")
    log.info("resuming from %s (epoch %s, step %s)%s", resume.ckpt, state.get("epoch"),
             state.get("global_step"), f" in {resume.run_dir}" if resume.run_dir else "")
    return resume


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def find_last(cfg: DictConfig) -> Path:
    """The newest run dir under ``paths.log_dir`` with a ``last.ckpt`` and the same :data:`SAME` config."""
    log_dir = Path(cfg.paths.log_dir)
    own = Path(cfg.paths.output_dir).resolve()
    wanted = {key: _plain(cfg.get(key)) for key in SAME}
    for run_dir in newest_runs(log_dir, f"checkpoints/{LAST}"):
        if run_dir.resolve() == own or not (run_dir / "config.yaml").is_file():
            continue
        saved = OmegaConf.load(run_dir / "config.yaml")
        if all(_plain(saved.get(key)) == value for key, value in wanted.items()):
            return run_dir
    raise ConfigError(f"ckpt_path=last: no run under {log_dir} holds checkpoints/{LAST} with the same "
                      f"{', '.join(SAME)}; run without ckpt_path (or pass the run dir: ckpt_path=<run dir>)")


def match_structure(module: torch.nn.Module, ckpt: Path) -> list[str]:
    """Rebuild the module's compressed layers with the checkpoint's ranks and mask sizes (before fit)."""
    from saten.reload import match_state

    state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)["state_dict"]
    rebuilt = match_state(module, state)
    if rebuilt:
        log.info("resume: %d compressed layers rebuilt with the checkpoint's ranks", len(rebuilt))
    return rebuilt
