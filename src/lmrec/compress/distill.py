"""Knowledge distillation for compression: the loss is the Trainer's
(:func:`lmrec.train.losses.distillation_loss`; sequential students use it through
``--set teacher=RUN``)."""

from __future__ import annotations

from lmrec.train.losses import distillation_loss

__all__ = ["distillation_loss"]
