"""Knowledge distillation (Hinton et al. 2015) as a standalone loss over catalog logits."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lmrec.errors import ConfigError


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """``alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(student, targets)``.

    ``student_logits`` and ``teacher_logits`` are (N, n_items), ``targets`` (N,) item rows. Both
    terms are means over the N rows. The T² keeps the soft term's gradients on the same scale as
    the hard one's whatever the temperature. Items the teacher gives zero probability (logit
    ``-inf``, for example masked ones) add nothing to the KL term. The teacher gets no gradient.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ConfigError(
            f"student and teacher logits must both be (N, n_items), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ConfigError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    p_t = log_t.exp()
    kl = torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t)).sum(-1).mean()
    ce = F.cross_entropy(student_logits.float(), targets.long())
    return alpha * temperature**2 * kl + (1 - alpha) * ce
