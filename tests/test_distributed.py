"""Data-parallel training: 2 gloo ranks equal one process with the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from lmrec.data.schema import Dataset
from lmrec.models import FitOptions
from lmrec.models.sequential import SASRec, SequentialConfig
from lmrec.train.distributed import shard

# every history has the same length, so each rank's half of a batch holds as many targets
# fp32 (amp off): bf16 rounds a sum over two ranks differently from the sum in one process
CONFIG = {
    "dim": 16,
    "inner": 32,
    "layers": 1,
    "heads": 2,
    "max_len": 6,
    "dropout": 0.0,
    "epochs": 3,
    "batch_size": 8,
    "amp": False,
}


def data() -> Dataset:
    rows = [(u, (u * 5 + 3 * k) % 23, k) for u in range(32) for k in range(7)]
    return Dataset.from_frame(pd.DataFrame(rows, columns=["user", "item", "timestamp"]))


def fit(**options: object) -> SASRec:
    return SASRec(SequentialConfig(**CONFIG)).fit(data(), None, FitOptions(seed=4, **options))  # type: ignore[arg-type]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    from lmrec.train.distributed import DDPStrategy

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = fit(strategy=DDPStrategy())
        save_file({k: v.contiguous() for k, v in model.state().items()}, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shard_takes_every_worlds_row() -> None:
    batch = (torch.arange(6), torch.arange(6) * 10)
    assert [t.tolist() for t in shard(batch, 1, 2)] == [[1, 3, 5], [10, 30, 50]]
    with pytest.raises(TypeError, match="cannot shard"):
        shard({"a": 1}, 0, 2)


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = fit().state()
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    dim = CONFIG["dim"]
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # DDP keeps the ranks in step
        ddp = ranks[0][key]
        if key.endswith("in_proj_bias"):
            # The key bias cannot change attention (softmax ignores a shift shared by all keys), so
            # its true gradient is 0; Adam turns the float noise left in it into steps. Set aside.
            ddp, value = torch.cat([ddp[:dim], ddp[2 * dim :]]), torch.cat([value[:dim], value[2 * dim :]])
        assert torch.allclose(ddp, value, atol=1e-6), (key, float((ddp - value).abs().max()))
