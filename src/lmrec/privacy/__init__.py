"""Privacy: masked copies of datasets, measured PII scrubbing, membership-inference attacks.

* :mod:`~lmrec.privacy.mask` — keyed pseudonyms, coarser times, scrubbed text, generalised users
  (``lmrec mask``);
* :mod:`~lmrec.privacy.pii` — the scrubber (lmrec's patterns, Presidio's when installed) and a
  generated test set that measures its recall and precision;
* :mod:`~lmrec.privacy.attack` — a user-level membership-inference attack on any model, and the
  AUC bound of an ε-DP model;
* :mod:`~lmrec.privacy.split` — the user-disjoint split (members / non-members) it needs.
"""

from __future__ import annotations

from lmrec.privacy.attack import AttackResult, dp_auc_bound, membership_inference, membership_scores
from lmrec.privacy.mask import MaskOptions, MaskReport, load_key, mask, mask_dataset, pseudonym, write_masked
from lmrec.privacy.pii import measure_scrubber, pii_corpus, scrub_text
from lmrec.privacy.split import MembershipSplit, membership_split

__all__ = [
    "AttackResult",
    "MaskOptions",
    "MaskReport",
    "MembershipSplit",
    "dp_auc_bound",
    "load_key",
    "mask",
    "mask_dataset",
    "measure_scrubber",
    "membership_inference",
    "membership_scores",
    "membership_split",
    "pii_corpus",
    "pseudonym",
    "scrub_text",
    "write_masked",
]
