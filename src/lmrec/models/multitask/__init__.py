"""Multi-task learning over the shared sequential encoder: ``mtl-sasrec``.

One causal transformer (:class:`~lmrec.models.sequential.SequenceEncoder`, as in ``sasrec``) reads
each history; at every position its hidden state feeds several tasks about the *next* interaction:

* ``next_item`` — which item comes next: full-catalog softmax over the tied item embeddings, the
  same loss as ``sasrec``;
* ``regression`` tasks — a value of the next interaction (its ``rating``): MSE;
* ``binary`` tasks — a yes/no of the next interaction (``like``: rating >= 4): BCE.

Regression and binary heads see the history state *and* the target item's embedding
(an MLP on ``[z, e, z * e]``), so they predict "what would this user give that item".

Between the encoder and the heads sits a mixer (per position):

* ``shared`` — shared bottom: every task reads the encoder's state as it is;
* ``mmoe`` — Multi-gate Mixture-of-Experts (Ma et al. 2018): ``experts`` feed-forward experts,
  each task mixes them with its own softmax gate;
* ``ple`` — one level of Progressive Layered Extraction (Tang et al. 2020): ``experts`` shared
  experts plus ``task_experts`` experts of each task; a task's gate mixes the shared ones and its
  own.

Experts are residual (``z = h + Σ g_e · expert_e(h)``), so a task starts from the encoder's state
and learns what to add. Loss weighting is ``fixed`` (each task's weight) or ``uncertainty``
(Kendall et al. 2018: a learned log-variance ``s`` per task, ``w · (exp(-s) · L + s / 2)`` for
classification and ``w · (exp(-s) · L / 2 + s / 2)`` for regression). The Trainer gets the
weighted terms by name.

Validation (``stop_on``) and what is logged: each epoch the model measures next-item NDCG@10 on
the validation users and, when the validation set carries its targets' values
(:class:`RatedEvalSet`; a plain :class:`~lmrec.data.batch.EvalSet` carries items only), RMSE/MAE
of each regression task and AUC/log-loss of each binary one. Early stopping follows the next-item
NDCG by default (the main task: ``score`` ranks by it); ``stop_on="mean"`` follows the mean
relative improvement of every task's main metric over its first validation (NDCG, AUC up; RMSE
down), ``stop_on=<task>`` one task. ``training_log`` holds the per-task losses, validation metrics
and mean gate weights (expert utilisation) of every epoch, and those of the best epoch.

Modules: :mod:`.tasks` (task specs, their targets, :class:`RatedEvalSet`), :mod:`.config`
(:class:`MultiTaskConfig`), :mod:`.network` (mixer, heads, :class:`MultiTaskNet`) and :mod:`.model`
(:class:`MultiTaskSASRec` and its Trainer task).
"""

from lmrec.models.multitask.config import MIXERS, WEIGHTINGS, MultiTaskConfig
from lmrec.models.multitask.model import MultiTaskSASRec, MultiTaskTask
from lmrec.models.multitask.network import MultiTaskNet, PairHead, TaskMixer
from lmrec.models.multitask.tasks import (
    BUILTIN_TASKS,
    TASK_KINDS,
    RatedEvalSet,
    TaskSpec,
    parse_task,
    target_labels,
    target_pairs,
    target_values,
)

__all__ = [
    "BUILTIN_TASKS",
    "MIXERS",
    "TASK_KINDS",
    "WEIGHTINGS",
    "MultiTaskConfig",
    "MultiTaskNet",
    "MultiTaskSASRec",
    "MultiTaskTask",
    "PairHead",
    "RatedEvalSet",
    "TaskMixer",
    "TaskSpec",
    "parse_task",
    "target_labels",
    "target_pairs",
    "target_values",
]
