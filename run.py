"""Fine-tune a Saten-compressed transformer on a task: ``python run.py task=mrpc saten.density=0.1``.

Config: conf/config.yaml (Hydra). Multirun: ``python run.py -m task=mrpc,rte saten.density=0.05,0.1``.
Evaluate only: ``python run.py train=false ckpt_path=<run dir or .ckpt>``; resume: ``ckpt_path=last``.
Returns best/<task metric> so that sweepers (Optuna) can optimize it. A bad value prints one line
``error: <key>=<value>: <problem>; <fix>`` and exits 2 (``SATEN_DEBUG=1`` adds the traceback); in a multirun
a failed job is recorded in its summary.json, the others run, and the process exits 1 at the end.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from saten.failure import report_config_error, run_job, sweep_failed  # noqa: E402
from saten.train import register_resolvers  # noqa: E402

register_resolvers()  # run dirs use ${run_tag:...}; Hydra resolves them before main() runs

CONF_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    from saten.validate import check_group_choices, check_overrides

    try:
        check_group_choices(sys.argv[1:], CONF_DIR)
        check_overrides(sys.argv[1:], CONF_DIR)
    except Exception as error:
        report_config_error(error)
    main()
    if sweep_failed():
        sys.exit(1)
