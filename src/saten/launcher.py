"""Hydra callback for process-based launchers (``hydra/launcher=parallel``).

Hydra's joblib launcher runs each job in a fresh loky interpreter, which has not imported ``run.py``'s
modules, so the config resolvers (``run_tag``, ``safe_dirname``, …) would be unknown there. The launcher's
Hydra context, callbacks included, is pickled to every worker; unpickling this callback imports this module,
which registers the resolvers before the job's config is resolved.
"""

from __future__ import annotations

from hydra.experimental.callback import Callback

from saten.train import register_resolvers

register_resolvers()


class RegisterResolvers(Callback):
    """Registers saten's OmegaConf resolvers in every process that loads it (see the module docstring)."""

    def on_job_start(self, config, **kwargs) -> None:
        register_resolvers()
