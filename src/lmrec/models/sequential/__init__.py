"""Sequential transformers: one encoder, two objectives.

* ``sasrec`` — causal self-attention trained to predict the next item at every position of a
  sequence in one pass (Kang & McAuley 2018), with full-catalog softmax cross-entropy by default
  ("SASRec+", Klenitskiy & Vasilev 2023).
* ``bert4rec`` — bidirectional self-attention trained by masked-item modelling (Sun et al. 2019);
  at inference a [MASK] is appended after the history and its prediction is the next item.

Items are represented by an ID embedding (``item_repr="id"``), by a projection of their text
embedding from a sentence encoder (``"text"``: an item never seen in training is scored as soon as
its text is known, and the weights transfer to another catalog), by a learned per-dimension
gate between the two (``"fused"``), or by its ID row where it has a trained one and by its text
mapped into the ID space otherwise (``"aligned"``: the text adaptor learns to predict trained ID
rows, so warm items score exactly as with IDs and cold ones from text), or late (``"late"``: the
sequence is read through ID rows alone, and the text enters at the output, each item's logit the
ID one plus one from its frozen text embedding through a learned adaptor that starts at zero, so
training starts from the ID model; an item without a trained ID row is scored by its text part).

Both can be pretrained by masked-item modelling and fine-tuned on their own objective
(``pretrain_epochs``), or start from a saved run (``init_from``). ``score`` returns logits over the
catalog; ``distribution`` turns them into p(next item | history).

Item rows are shifted by one inside the network: 0 is padding, 1..n the items, n+1 the mask token.
Training sequences are cut into windows from the end of each user's history (every interaction is
a target once), windows of similar length are batched together so little compute goes to padding.

Parts with their own options: score-level text fusion (``fusion.*``, :mod:`lmrec.models.text_fusion`)
and adversarial training of the item rows (``adversarial.*``, APR, :mod:`.adversarial`).
"""

from lmrec.models.sequential.adversarial import AdversarialConfig, adversarial_loss
from lmrec.models.sequential.blocks import BLOCKS, ByteDropout, SelfAttention, causal_mask, transformer_blocks
from lmrec.models.sequential.config import (
    FULL_SOFTMAX_ITEMS,
    ITEM_INITS,
    ITEM_REPRS,
    LOSSES,
    OBJECTIVES,
    OPEN,
    REGULARIZATION,
    BERT4RecConfig,
    SequentialConfig,
    TextSequentialConfig,
    regularization,
)
from lmrec.models.sequential.encoder import (
    PrivateSequenceEncoder,
    SequenceEncoder,
    count_parameters,
    histories_to_inputs,
)
from lmrec.models.sequential.model import (
    BERT4Rec,
    SASRec,
    SequentialRecommender,
    TextSASRec,
    expected_similarity,
    load_sequential,
)
from lmrec.models.sequential.tasks import PrivateSequenceTask, SequenceTask

__all__ = [
    "BLOCKS",
    "FULL_SOFTMAX_ITEMS",
    "ITEM_INITS",
    "ITEM_REPRS",
    "LOSSES",
    "OBJECTIVES",
    "OPEN",
    "REGULARIZATION",
    "AdversarialConfig",
    "BERT4Rec",
    "BERT4RecConfig",
    "ByteDropout",
    "PrivateSequenceEncoder",
    "PrivateSequenceTask",
    "SASRec",
    "SelfAttention",
    "SequenceEncoder",
    "SequenceTask",
    "SequentialConfig",
    "SequentialRecommender",
    "TextSASRec",
    "TextSequentialConfig",
    "adversarial_loss",
    "causal_mask",
    "count_parameters",
    "expected_similarity",
    "histories_to_inputs",
    "load_sequential",
    "regularization",
    "transformer_blocks",
]
