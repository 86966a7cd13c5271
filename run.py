"""Fine-tune a Saten-compressed transformer on a task: ``python run.py task=mrpc saten.density=0.1``.

Config: conf/config.yaml (Hydra). Multirun: ``python run.py -m task=mrpc,rte saten.density=0.05,0.1``.
Evaluate only: ``python run.py train=false ckpt_path=<run dir or .ckpt>``.
Returns best/<task metric> so that sweepers (Optuna) can optimize it.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from saten.train import config_error, optimized_metric, run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return optimized_metric(cfg, run(cfg))
    except Exception as error:
        cause = config_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
