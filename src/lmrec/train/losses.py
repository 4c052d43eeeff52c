"""Loss functions, standalone so they can be tested and reused by any model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmrec.errors import ConfigError


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: mean −log σ(pos − neg) (Rendle et al. 2009)."""
    return -F.logsigmoid(pos - neg).mean()


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target.to(pred.dtype))


def softmax_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the full softmax over the catalog: logits (N, n_items), targets (N,)."""
    return F.cross_entropy(logits.float(), targets)


def sampled_softmax_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax over the positive and k sampled negatives: pos (N,), neg (N, k).

    Negatives are drawn uniformly, so the log-Q correction is a constant and is left out.
    """
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def gbce_loss(pos: torch.Tensor, neg: torch.Tensor, n_items: int, t: float = 0.75) -> torch.Tensor:
    """Generalised BCE (Petrov & Macdonald, RecSys 2023): BCE whose positive term is raised to β,
    which undoes the overconfidence that k uniform negatives cause. t = 0 is plain BCE; t = 1
    calibrates fully. pos (N,), neg (N, k)."""
    alpha = neg.shape[1] / max(1, n_items - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    pos, neg = pos.float(), neg.float()
    return -(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(1)).mean()


def bce_one_negative(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """SASRec's original loss: one positive and one sampled negative per position."""
    return -(F.logsigmoid(pos.float()) + F.logsigmoid(-neg.float())).mean()


def logq_softmax_loss(logits: torch.Tensor, log_q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sampled softmax with the log-Q correction (Bengio & Senécal 2008; Yi et al., RecSys 2019):
    cross-entropy over a shared set of candidates whose logits are lowered by the log of how often
    each is sampled, so popular in-batch negatives are not over-penalised and the loss estimates
    the full softmax. logits (N, C) over the candidates, log_q (C,), labels (N,) candidate columns."""
    return F.cross_entropy(logits.float() - log_q.float().unsqueeze(0), labels)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015) over catalog logits:
    ``alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(student, targets)``.

    ``student_logits`` and ``teacher_logits`` are (N, n_items), ``targets`` (N,) item rows; both
    terms are means over the N rows. T² keeps the soft term's gradients on the hard one's scale
    whatever the temperature. Items the teacher gives zero probability (logit ``-inf``) add
    nothing to the KL term. The teacher gets no gradient.
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
