"""Lightning modules: one per task family (GLUE, SuperGLUE, causal LM).

>>> from saten.lit import GlueClassifier, load_run
>>> module = load_run("logs/runs/mrpc/saten_u_d0.1_e0.5/2025-01-01_12-00-00")  # doctest: +SKIP
"""

from saten.lit.causal_lm import CausalLM
from saten.lit.classification import GlueClassifier, build_module, load_run, save_run_model
from saten.lit.superglue import SuperGlueClassifier

__all__ = ["CausalLM", "GlueClassifier", "SuperGlueClassifier", "build_module", "load_run", "save_run_model"]
