"""Loss functions, standalone so they can be tested and reused by any model."""

from __future__ import annotations

from typing import Any, cast

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


def sequence_ce_per_example(
    logits: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """One loss per sequence, for per-example gradients (DP-SGD): logits (B, L, V), targets (B, L)
    rows of V with -1 where a position has no target, ``excluded`` (V,) bool rows never predicted
    → (B,) the mean full-softmax cross-entropy over each sequence's targeted positions (0 where
    it has none)."""
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
    has = targets >= 0
    return ce.view(targets.shape).sum(1) / has.sum(1).clamp(min=1)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Full-catalog cross-entropy from hidden states and the item table, never holding the whole
    (N, n_items) logits: each chunk of rows is scored, turned into its softmax, and dropped; the
    backward pass scores the chunk again and turns softmax − one-hot straight into the two
    gradients. Matmuls and softmax run in ``dtype``: in bf16 (a CPU with bf16 units) this is 2-3×
    faster than float32 cross-entropy, with the gradient rounded to bf16 as autocast rounds it."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, rows: int, dtype: torch.dtype
    ) -> torch.Tensor:
        h, w = hidden.to(dtype), table.to(dtype)
        picked = torch.empty(len(hidden), device=hidden.device)
        for s in range(0, len(hidden), rows):
            p = torch.softmax(h[s : s + rows] @ w.T, dim=1)
            picked[s : s + rows] = p.gather(1, targets[s : s + rows, None]).squeeze(1).float()
        ctx.save_for_backward(hidden, table, targets)
        ctx.rows, ctx.dtype = rows, dtype
        return -picked.clamp(min=torch.finfo(torch.float32).tiny).log().mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, table, targets = ctx.saved_tensors
        rows, dtype = ctx.rows, ctx.dtype
        h, w = hidden.to(dtype), table.to(dtype)
        scale = float(grad) / len(hidden)
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros_like(table)
        for s in range(0, len(hidden), rows):
            p = torch.softmax(h[s : s + rows] @ w.T, dim=1)
            p[torch.arange(len(p), device=p.device), targets[s : s + rows]] -= 1
            p.mul_(scale)
            grad_h[s : s + rows] = p @ w
            grad_w += p.T @ h[s : s + rows]
        return grad_h, grad_w, None, None, None


def _rows_per_chunk(n_items: int) -> int:
    """Rows scored at once: about 2M logits (a few MB, so a chunk stays in cache)."""
    return max(1, (1 << 21) // max(1, n_items))


def chunked_softmax_ce(
    hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``softmax_ce(hidden @ table.T, targets)`` computed in chunks of rows (about 2M logits at a
    time) without materialising or storing the full logits; ``dtype`` for the matmuls (default:
    the autocast dtype when autocast is on, else the inputs' own)."""
    if dtype is None:
        on = torch.is_autocast_enabled(hidden.device.type)
        dtype = torch.get_autocast_dtype(hidden.device.type) if on else hidden.dtype
    rows = _rows_per_chunk(len(table))
    with torch.autocast(hidden.device.type, enabled=False):
        loss = _ChunkedSoftmaxCE.apply(hidden.float(), table.float(), targets, rows, dtype)
    return cast(torch.Tensor, loss)


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
