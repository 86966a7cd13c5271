"""Lightning modules: one per task family.

>>> from saten.lit import GlueClassifier, load_run
>>> module = load_run("logs/runs/mrpc/saten_u_d0.1_e0.5/2025-01-01_12-00-00")  # doctest: +SKIP
"""

from saten.lit.classification import GlueClassifier, build_module, load_run, save_run_model

__all__ = ["GlueClassifier", "build_module", "load_run", "save_run_model"]
