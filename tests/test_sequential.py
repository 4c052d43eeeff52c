"""The sequential encoder: windows, masking, distribution, pretrain → fine-tune, init_from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.sequences import random_batches, sequence_windows
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate import evaluate
from lmrec.models import FitOptions, Recommender, model_class
from lmrec.models.sequential import BERT4RecConfig, SASRec, SequentialConfig, regularization
from tests.conftest import checkerboard

TINY = {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 12, "epochs": 4, "batch_size": 16, "lr": 0.01}


def test_windows_supervise_every_transition_once() -> None:
    history = QueryBatch.from_histories([0], [list(range(10))])
    windows = sequence_windows(history, size=4)
    pairs = [(int(w[i]), int(w[i + 1])) for w in windows for i in range(len(w) - 1)]
    assert sorted(pairs) == [(i + 1, i + 2) for i in range(9)]  # shifted ids, each transition once
    assert all(len(w) <= 4 for w in windows)


def test_shifted_windows_still_supervise_every_transition_once() -> None:
    history = QueryBatch.from_histories([0], [list(range(10))])
    boundaries = set()
    for shift in range(3):  # 0 ≤ shift ≤ size − 2
        windows = sequence_windows(history, size=4, min_length=2, shifts=np.array([shift]))
        pairs = [(int(w[i]), int(w[i + 1])) for w in windows for i in range(len(w) - 1)]
        assert sorted(pairs) == [(i + 1, i + 2) for i in range(9)]
        assert all(2 <= len(w) <= 4 for w in windows)
        boundaries.add(tuple(int(w[0]) for w in windows))
    assert len(boundaries) == 3  # each shift cuts the history elsewhere


def test_windows_keep_single_item_history_only_when_asked() -> None:
    histories = QueryBatch.from_histories([0, 1, 2], [[5], [], [1, 2]])
    assert [w.tolist() for w in sequence_windows(histories, size=4)] == [[6], [2, 3]]  # masked items: any
    assert [w.tolist() for w in sequence_windows(histories, size=4, min_length=2)] == [[2, 3]]  # next item


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_one_and_two_item_histories_train_without_nan(objective: str) -> None:
    """Windows of one item have no next-item target; length bucketing used to put them all in one
    batch, whose empty loss was nan. Every batch now has a target, and every loss is finite."""
    rows = [(u, (u * 3 + k) % 7, k) for u in range(40) for k in range(1 + u % 2)]
    data = Dataset.from_frame(pd.DataFrame(rows, columns=["user", "item", "timestamp"]))
    cfg = SequentialConfig(objective=objective, dim=8, inner=16, layers=1, heads=1, max_len=4, epochs=3, batch_size=8)
    model = SASRec(cfg).fit(data, None, FitOptions(seed=0))
    assert len(model.training_log["losses"]) == 3
    assert np.isfinite(model.training_log["losses"]).all()


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="objective"):
        SequentialConfig(objective="sideways")
    with pytest.raises(ConfigError, match="divisible"):
        SequentialConfig(dim=10, heads=3)
    assert BERT4RecConfig().objective == "masked"


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_distribution_sums_to_one(name: str, board: Dataset) -> None:
    model = _fit(name, board, epochs=1)
    for temperature in (0.5, 1.0, 3.0):
        p = model.distribution([0, 2, 4], temperature)  # type: ignore[attr-defined]
        assert p.shape == (board.n_items,)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
        assert (p >= 0).all()
    sharp = model.distribution([0, 2, 4], 0.1)  # type: ignore[attr-defined]
    flat = model.distribution([0, 2, 4], 10.0)  # type: ignore[attr-defined]
    assert sharp.max() > flat.max()  # lower temperature concentrates the mass


@pytest.mark.parametrize("loss", ["ce", "sampled", "gbce", "bce"])
def test_every_loss_trains(loss: str, board: Dataset) -> None:
    model = _fit("sasrec", board, epochs=2, loss=loss, negatives=8)
    assert np.isfinite(model.training_log["losses"]).all()


def test_history_change_changes_scores_without_retraining(board: Dataset) -> None:
    model = _fit("sasrec", board, epochs=2)
    a = model.score(QueryBatch.from_histories([0], [[0, 2]]))
    b = model.score(QueryBatch.from_histories([0], [[0, 2, 4]]))
    assert not torch.allclose(a, b)


def test_pretrain_then_finetune_logs_both_phases(board: Dataset) -> None:
    model = _fit("sasrec", board, epochs=2, pretrain_epochs=2)
    assert len(model.training_log["pretrain"]["losses"]) == 2
    assert len(model.training_log["losses"]) == 2


def test_init_from_saved_run_starts_from_its_weights(board: Dataset, tmp_path: Path) -> None:
    pretrained = _fit("bert4rec", board, epochs=2)
    pretrained.save(tmp_path / "model")
    cfg = SequentialConfig.from_dict({**TINY, "epochs": 1, "lr": 1e-9, "dropout": 0.0, "init_from": str(tmp_path)})
    tuned = SASRec(cfg)
    tuned.fit(leave_one_out(board).train_dataset(), None, FitOptions(seed=3))
    # a learning rate of ~0 leaves the loaded weights in place
    for key, value in pretrained.net.state_dict().items():  # type: ignore[attr-defined]
        assert torch.allclose(value, tuned.net.state_dict()[key], atol=1e-6), key


def test_init_from_rejects_other_catalog(board: Dataset, tmp_path: Path) -> None:
    from tests.conftest import checkerboard

    _fit("sasrec", checkerboard(n_items=20, per_user=6), epochs=1).save(tmp_path / "other")
    cfg = SequentialConfig.from_dict({**TINY, "init_from": str(tmp_path / "other")})
    with pytest.raises(ConfigError, match="same"):
        SASRec(cfg).fit(leave_one_out(board).train_dataset(), None, FitOptions())


@pytest.mark.parametrize("shift_windows", [False, True])
def test_learns_parity_of_history(board: Dataset, shift_windows: bool) -> None:
    split = leave_one_out(board)
    model = _fit("sasrec", board, epochs=15, shift_windows=shift_windows)
    pop = model_class("pop")().fit(split.train_dataset())
    test = split.eval_set("test")
    ours = evaluate(model, test, metrics=("ndcg",)).metrics["ndcg@10"]
    assert ours > 1.2 * evaluate(pop, test, metrics=("ndcg",)).metrics["ndcg@10"]


def _fit(name: str, data: Dataset, **overrides: object) -> Recommender:
    klass = model_class(name)
    model = klass(klass.config_class.from_dict({**TINY, **overrides}))
    return model.fit(leave_one_out(data).train_dataset(), None, FitOptions(seed=0))


def test_expected_similarity_is_low_for_spread_distributions() -> None:
    from lmrec.models.sequential import expected_similarity

    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    same_category = torch.tensor([[10.0, 10.0, -10.0, -10.0]])  # mass on two items of one category
    mixed = torch.tensor([[10.0, -10.0, 10.0, -10.0]])  # mass on one item of each category
    assert expected_similarity(same_category, vectors).item() == pytest.approx(1.0, abs=1e-4)
    assert expected_similarity(mixed, vectors).item() == pytest.approx(0.5, abs=1e-4)


def test_diversity_regulariser_spreads_top_lists(board: Dataset) -> None:
    from lmrec.evaluate.beyond import category_coverage

    split = leave_one_out(board)
    cats = list(board.catalog["categories"])
    coverage = {}
    for weight in (0.0, 5.0):
        model = _fit("sasrec", board, epochs=10, diversity_weight=weight)
        items, _ = model.recommend(split.eval_set("test").queries, k=4)
        coverage[weight] = category_coverage(items, cats)
    assert coverage[5.0] > coverage[0.0], coverage  # the checkerboard model learns one parity per user


def test_random_batches_hold_every_window_once_and_mix_lengths() -> None:
    windows = [np.arange(1, n + 1) for n in [2] * 50 + [40] * 50]
    batches = random_batches(windows, 10, torch.Generator().manual_seed(0))
    assert sorted(len(w) for b in batches for w in b) == sorted(len(w) for w in windows)
    assert all(len(b) == 10 for b in batches)
    mixed = [b for b in batches if len({len(w) for w in b}) == 2]
    assert len(mixed) >= 8  # length-sorted batches would mix at most one


@pytest.mark.parametrize("causal", [True, False])
def test_the_encoder_runs_mixed_lengths_in_chunks_and_computes_the_same(causal: bool) -> None:
    from lmrec.models.sequential import encoder

    torch.manual_seed(0)
    net = encoder.SequenceEncoder(50, SequentialConfig(dim=16, inner=32, layers=2, heads=2, max_len=20, dropout=0.0))
    net.train()  # chunks are a training step's
    lengths = torch.randint(1, 21, (3 * encoder.CHUNK_ROWS + 5,))
    seq = torch.zeros(len(lengths), 20, dtype=torch.long)
    for row, n in enumerate(lengths):
        seq[row, :n] = torch.randint(1, 51, (int(n),))
    real = seq > 0
    chunked, whole = net(seq, causal=causal), net._hidden(seq, causal, net.item_table())
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked[real], whole[real], atol=1e-5)


def test_diversity_weight_needs_full_softmax() -> None:
    with pytest.raises(ConfigError, match="loss=ce"):
        SequentialConfig(diversity_weight=1.0, loss="bce")


@pytest.mark.parametrize("training", [True, False])
def test_causal_encoder_never_sees_the_future(training: bool) -> None:
    from lmrec.models.sequential import SequenceEncoder

    torch.manual_seed(0)
    net = SequenceEncoder(30, SequentialConfig(dim=16, inner=32, layers=2, heads=2, max_len=10, dropout=0.0))
    net.train(training)
    a = torch.tensor([[1, 2, 3, 4, 5, 6]])
    b = torch.tensor([[1, 2, 3, 9, 9, 9]])  # same first three items, other future
    ha, hb = net(a, causal=True), net(b, causal=True)
    assert torch.allclose(ha[:, :3], hb[:, :3], atol=1e-6)
    assert not torch.allclose(ha[:, 3:], hb[:, 3:])
    hm, hn = net(a, causal=False), net(b, causal=False)
    assert not torch.allclose(hm[:, :3], hn[:, :3])  # bidirectional does look ahead


def test_inbatch_loss_learns_and_auto_picks_by_catalog_size() -> None:
    split = leave_one_out(checkerboard())
    train, test = split.train_dataset(), split.eval_set("test")
    model = SASRec(SequentialConfig.from_dict({**TINY, "loss": "inbatch", "negatives": 8, "epochs": 10})).fit(
        train, None, FitOptions(seed=0)
    )
    assert np.isfinite(model.training_log["losses"]).all()
    assert model.training_log["losses"][-1] < model.training_log["losses"][0]
    pop = model_class("pop")().fit(train)
    ndcg = {m.name: evaluate(m, test, metrics=("ndcg",)).metrics["ndcg@10"] for m in (model, pop)}
    assert ndcg["sasrec"] > ndcg["pop"], ndcg
    assert SASRec().config.loss == "auto" and model.loss_kind == "inbatch"
    auto = SASRec(SequentialConfig.from_dict({**TINY, "epochs": 1})).fit(train, None, FitOptions(seed=0))
    assert auto.loss_kind == "ce"  # 40 items: full softmax


def test_a_small_student_distils_a_teacher(tmp_path: Path) -> None:
    split = leave_one_out(checkerboard())
    train, test = split.train_dataset(), split.eval_set("test")
    teacher = SASRec(SequentialConfig.from_dict({**TINY, "epochs": 8})).fit(train, None, FitOptions(seed=0))
    teacher.save(tmp_path / "teacher")
    student_cfg = {**TINY, "dim": 8, "inner": 16, "heads": 1, "epochs": 8, "teacher": str(tmp_path / "teacher")}
    student = SASRec(SequentialConfig.from_dict(student_cfg)).fit(train, None, FitOptions(seed=0))
    assert np.isfinite(student.training_log["losses"]).all()
    pop = model_class("pop")().fit(train)
    ndcg = {m: evaluate(x, test, metrics=("ndcg",)).metrics["ndcg@10"] for m, x in (("student", student), ("pop", pop))}
    assert ndcg["student"] > ndcg["pop"], ndcg
    with pytest.raises(ConfigError, match="reads 12 items, the student 20"):
        SASRec(SequentialConfig.from_dict({**student_cfg, "max_len": 20})).fit(train, None, FitOptions(seed=0))
    with pytest.raises(ConfigError, match="loss=ce"):
        SequentialConfig.from_dict({**student_cfg, "loss": "bce"})


def test_distillation_loss_by_hand() -> None:
    from lmrec.train.losses import distillation_loss

    s, t, y = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([1])
    p_t = torch.softmax(t / 2, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, -1))).sum()
    ce = torch.nn.functional.cross_entropy(s, y)
    assert distillation_loss(s, t, y, temperature=2.0, alpha=0.25).item() == pytest.approx(
        (0.25 * 4 * kl + 0.75 * ce).item()
    )


def test_blocks_compute_what_torch_transformer_layers_do() -> None:
    """The blocks carry nn.TransformerEncoderLayer's parameter names (runs saved with it load)
    and compute the same, causal and with padding."""
    from torch import nn

    from lmrec.models.sequential import transformer_blocks

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, 0.2, activation="gelu", batch_first=True, norm_first=True)
    reference = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    ours = transformer_blocks(16, 2, 32, 0.2, 2).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)[None, None]
    want = reference(x, mask=nn.Transformer.generate_square_subsequent_mask(6), is_causal=True)
    assert torch.allclose(ours(x, causal), want, atol=1e-5)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 4:] = True
    want = reference(x, src_key_padding_mask=padding)
    assert torch.allclose(ours(x, padding[:, None, None, :])[~padding], want[~padding], atol=1e-5)


def test_byte_dropout_keeps_one_minus_p_and_scales() -> None:
    from lmrec.models.sequential import ByteDropout

    torch.manual_seed(0)
    drop = ByteDropout(0.25)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y > 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert torch.allclose(y[kept], torch.tensor(4 / 3))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad > 0, kept)  # the gradient flows where the input was kept
    assert torch.equal(drop.eval()(x), x)


def test_item_init_text_starts_id_rows_from_whitened_text(board: Dataset) -> None:
    from lmrec.text.whiten import whiten
    from tests.conftest import KeywordEncoder

    options = FitOptions(seed=0, text_encoder=KeywordEncoder())
    config = SequentialConfig(**{**TINY, "epochs": 1, "lr": 1e-12, "item_init": "text"})
    still = SASRec(config).fit(board, None, options)
    text = still.encode_items(board.catalog, KeywordEncoder())
    rows = still.net.items.weight[1 : board.n_items + 1].detach().numpy()
    assert np.allclose(rows, whiten(text, TINY["dim"], seed=0), atol=1e-5)  # lr ~0: still the initial rows
    assert SequentialConfig(item_init="text").item_repr == "id"  # an ID model: text only at the start
    with pytest.raises(ConfigError, match="item_init"):
        SequentialConfig(item_init="glove")


def test_item_init_pull_keeps_id_rows_near_their_text_start(board: Dataset) -> None:
    from tests.conftest import KeywordEncoder

    def drift(pull: float) -> float:
        config = SequentialConfig(**{**TINY, "epochs": 5, "lr": 0.05, "item_init": "text", "item_init_pull": pull})
        model = SASRec(config).fit(board, None, FitOptions(seed=0, text_encoder=KeywordEncoder()))
        rows = model.net.items.weight[1 : board.n_items + 1].detach()
        assert model.init_rows is not None
        return float((rows - model.init_rows).norm(dim=1).mean())

    assert drift(10.0) < 0.5 * drift(0.0)  # the pull holds the rows; without it they move freely
    with pytest.raises(ConfigError, match="item_init_pull"):
        SequentialConfig(item_init_pull=0.1)  # nothing to pull towards with random rows


def test_item_decay_to_text_decays_id_rows_towards_their_text_start(board: Dataset) -> None:
    from tests.conftest import KeywordEncoder

    def rows(decay_to: str) -> tuple[torch.Tensor, torch.Tensor]:
        config = SequentialConfig(
            **{**TINY, "epochs": 5, "lr": 0.01, "weight_decay": 50.0, "item_init": "text", "item_decay_to": decay_to}
        )
        model = SASRec(config).fit(board, None, FitOptions(seed=0, text_encoder=KeywordEncoder()))
        assert model.init_rows is not None
        return model.net.items.weight[1 : board.n_items + 1].detach(), model.init_rows

    to_zero, start = rows("zero")
    to_text, _ = rows("text")
    drift = lambda r: float((r - start).norm(dim=1).mean())  # noqa: E731
    assert drift(to_text) < 0.5 * drift(to_zero)  # strong decay: towards the text start, not towards 0
    with pytest.raises(ConfigError, match="item_decay_to"):
        SequentialConfig(item_decay_to="text")  # nothing to decay towards with random rows


def test_regularization_follows_the_logs_density(board: Dataset) -> None:
    assert regularization(58.3) == (0.4, 1.0)  # ml-100k: the values tuned there
    assert regularization(288.0) == (0.2, 0.0)  # the MovieLens-1M-shaped log: the values tuned there
    dropout, decay = regularization(130.0)
    assert 0.2 < dropout < 0.4 and 0.0 < decay < 1.0  # in between, in between
    assert regularization(12.7) == regularization(20.1) == (0.6, 0.0)  # the sparse shared logs: their values
    dropout, decay = regularization(35.0)
    assert 0.4 < dropout < 0.6 and 0.0 < decay < 1.0
    assert regularization(1.0) == regularization(12.7) and regularization(1e5) == regularization(288.0)

    fitted = SASRec(SequentialConfig(**{**TINY, "epochs": 1})).fit(board)
    per_item = len(board.interactions) / board.n_items
    assert (fitted.config.dropout, fitted.config.weight_decay) == regularization(per_item)  # numbers, saved
    given = SASRec(SequentialConfig(**{**TINY, "epochs": 1, "dropout": 0.1})).fit(board)
    assert given.config.dropout == 0.1 and given.config.weight_decay == regularization(per_item)[1]
    assert BERT4RecConfig().for_data(board).dropout == 0.1  # bert4rec's own tuned values stay
