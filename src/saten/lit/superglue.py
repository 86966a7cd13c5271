"""LightningModule for SuperGLUE classification: :class:`GlueClassifier` with the SuperGLUE task registry.

With a LLaMA-architecture model the head is ``LlamaForSequenceClassification`` (it pools the last non-pad
token; the pad token is the eos token, set by :func:`saten.models.load_model`).
"""

from __future__ import annotations

from saten.data.superglue import SuperGlueMetric, get_task
from saten.lit.classification import GlueClassifier


class SuperGlueClassifier(GlueClassifier):
    """Pretrained model + classification head, compressed, fine-tuned on one SuperGLUE task.

    Same parameters and attributes as :class:`GlueClassifier`; ``task.name`` is one of ``cb``, ``wsc``,
    ``copa``, ``superglue_rte``, ``wic``, ``boolq`` and the metrics are ``accuracy`` (CB: also
    ``f1_macro`` and ``combined``).
    """

    @staticmethod
    def task_spec(name: str):
        """The :class:`saten.data.superglue.SuperGlueTask` called ``name``."""
        return get_task(name)

    def make_metric(self, split: str) -> SuperGlueMetric:
        """Accuracy (and CB's macro F1) of the validation split."""
        return SuperGlueMetric(self.spec)
