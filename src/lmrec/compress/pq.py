"""Product quantization (Jégou et al. 2011) of item embeddings, scored by inner product.

The ``dim`` coordinates are cut into ``m`` sub-spaces of ``dim / m`` each; every sub-space has
``k`` ≤ 256 centroids learnt by k-means (k-means++ seeding, Lloyd iterations, empty clusters
re-seeded at the worst-served points), and an item is stored as ``m`` uint8 centroid ids —
``m`` bytes instead of ``4 · dim``.

Scoring is asymmetric (ADC): the query stays in float. For each query a lookup table
``lut[s, c] = query_s · centroid[s, c]`` (m × k) is built once, and an item's score is the sum of
``m`` table entries picked by its codes — no item vector is ever rebuilt. Items are scored in
chunks and only a running top-k is kept::

    pq = ProductQuantizer.fit(items, m=8, generator=torch.Generator().manual_seed(0))
    table = pq.quantize(items)                 # PQTable: codes (n, m) uint8
    values, rows = table.top_k(queries, k=10)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from lmrec.compress._topk import chunked_top_k
from lmrec.errors import ConfigError

CHUNK = 65_536  # items scored at a time


# -- k-means ------------------------------------------------------------------------------------------
def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(n, k) squared Euclidean distances, clamped at 0 (the expansion can round below)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_(min=0)


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row and its squared distance, in chunks of rows."""
    labels = torch.empty(len(x), dtype=torch.int64)
    dist = torch.empty(len(x))
    c_sq = c.pow(2).sum(1)
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk]
        d = torch.addmm(c_sq, part, c.T, alpha=-2)  # ‖c‖² − 2 x·c: the ‖x‖² term does not change the argmin
        best, labels[s : s + chunk] = d.min(dim=1)
        dist[s : s + chunk] = (best + part.pow(2).sum(1)).clamp_(min=0)
    return labels, dist


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is drawn with probability
    proportional to the squared distance to the nearest centre chosen so far."""
    n = len(x)
    x_sq = x.pow(2).sum(1)

    def sq_dist_to(i: int) -> torch.Tensor:  # (n,) squared distances to point i, clamped at 0
        return (x_sq - 2 * (x @ x[i]) + x_sq[i]).clamp_(min=0)

    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    closest = sq_dist_to(first)
    for _ in range(1, k):
        cdf = torch.cumsum(closest.double(), 0)
        if float(cdf[-1]) <= 0:  # fewer distinct points than k: any point will do, Lloyd resets duplicates
            idx = int(torch.randint(n, (1,), generator=generator))
        else:  # inverse-CDF draw (torch.multinomial is slow over many points)
            u = float(torch.rand(1, generator=generator, dtype=torch.float64)) * float(cdf[-1])
            idx = min(n - 1, int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64))))
        centres.append(x[idx])
        torch.minimum(closest, sq_dist_to(idx), out=closest)
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k, d) and labels (n,) of ``x`` (n, d): k-means++ seeding, then ``iters`` Lloyd
    iterations (:func:`lloyd`)."""
    x = x.float()
    if len(x) < 1 or k < 1:
        raise ConfigError(f"k-means needs points and k >= 1, got {len(x)} points, k={k}")
    return lloyd(x, kmeans_pp_init(x, k, generator), iters)


def lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` Lloyd iterations from ``centroids``; the final centroids and labels.

    A centroid left without points is moved onto the point farthest from its own centroid
    (one per empty cluster, the worst-served points first), so all ``k`` stay in use while there
    are at least ``k`` distinct points.
    """
    x, c = x.float(), centroids.float().clone()
    k = len(c)
    labels, dist = _assign(x, c)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        alive = counts > 0
        c = torch.where(alive[:, None], sums / counts.clamp(min=1)[:, None].float(), c)
        dead = torch.nonzero(~alive).flatten()
        if len(dead):
            worst = torch.argsort(dist, descending=True, stable=True)[: len(dead)]
            c[dead[: len(worst)]] = x[worst]
        labels, dist = _assign(x, c)
    return c, labels


# -- the quantizer --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProductQuantizer:
    """``centroids`` (m, k, dim / m) float32: centroid ``c`` of sub-space ``s`` is ``centroids[s, c]``."""

    centroids: torch.Tensor

    @property
    def m(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[0] * self.centroids.shape[2])

    @property
    def nbytes(self) -> int:
        return self.centroids.numel() * self.centroids.element_size()

    @classmethod
    def fit(
        cls,
        vectors: torch.Tensor,
        m: int,
        k: int = 256,
        iters: int = 10,
        sample: int | None = 65_536,
        generator: torch.Generator | None = None,
    ) -> ProductQuantizer:
        """Learn ``m`` codebooks of ``k`` centroids from ``vectors`` (n, dim); k-means reads a random
        ``sample`` of rows (None: all), which is plenty for 256 centroids in a few dimensions."""
        x = vectors.detach().float().cpu()
        if x.dim() != 2 or x.shape[1] % m:
            raise ConfigError(f"dim ({x.shape[-1]}) must be divisible by m ({m})")
        if not 1 <= k <= 256:
            raise ConfigError(f"k must be in 1..256 (codes are uint8), got {k}")
        if len(x) < k:
            raise ConfigError(f"need at least k={k} vectors to train on, got {len(x)}")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if sample is not None and len(x) > sample:
            x = x[torch.randperm(len(x), generator=gen)[:sample]]
        subs = x.reshape(len(x), m, -1)
        books = [kmeans(subs[:, s].contiguous(), k, iters, gen)[0] for s in range(m)]
        return cls(torch.stack(books).contiguous())

    def _split(self, vectors: torch.Tensor) -> torch.Tensor:
        x = vectors.detach().float().cpu()
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"vectors must be (n, {self.dim}), got {tuple(x.shape)}")
        return x.reshape(len(x), self.m, -1)

    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """uint8 codes (n, m): the nearest centroid of each sub-vector."""
        subs = self._split(vectors)
        out = torch.empty(len(subs), self.m, dtype=torch.uint8)
        for s in range(self.m):
            out[:, s] = _assign(subs[:, s], self.centroids[s])[0].to(torch.uint8)
        return out

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The (n, dim) reconstruction of ``codes``."""
        idx = codes.long()
        parts = [self.centroids[s][idx[:, s]] for s in range(self.m)]
        return torch.cat(parts, dim=1)

    def lookup_tables(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, m, k) inner products of each query's sub-vectors with every centroid."""
        q = self._split(queries)
        return torch.einsum("bsd,skd->bsk", q, self.centroids)

    def quantize(self, vectors: torch.Tensor) -> PQTable:
        return PQTable(self, self.encode(vectors))


@dataclass(frozen=True)
class PQTable:
    """Items stored as PQ codes (n, m) uint8, scored against float queries by ADC."""

    pq: ProductQuantizer
    codes: torch.Tensor

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[0])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes plus the codebooks."""
        return self.codes.numel() * self.codes.element_size() + self.pq.nbytes

    def state(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.pq.centroids, "codes": self.codes}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> PQTable:
        return cls(ProductQuantizer(tensors["centroids"]), tensors["codes"])

    def _luts(self, queries: torch.Tensor) -> torch.Tensor:
        """The lookup tables as one (m·k, B) matrix: row ``s·k + c`` holds ``query_s · centroid[s, c]``."""
        lut = self.pq.lookup_tables(queries[None] if queries.dim() == 1 else queries)
        return lut.reshape(len(lut), -1).T.contiguous()

    def _block(self, luts: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(B, stop - start) scores: Σ_s lut[s, code_s] for each item, as a sparse (items × m·k)
        one-hot matrix of the codes times the tables (m ones per row) — faster on CPU than a gather."""
        rows, m = stop - start, self.pq.m
        cols = (self.codes[start:stop].to(torch.int32) + self._offsets).reshape(-1)
        crow = torch.arange(0, rows * m + 1, m, dtype=torch.int32)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            onehot = torch.sparse_csr_tensor(
                crow, cols, torch.ones(rows * m), size=(rows, m * self.pq.k), check_invariants=False
            )
            return (onehot @ luts).T

    @property
    def _offsets(self) -> torch.Tensor:
        return torch.arange(self.pq.m, dtype=torch.int32) * self.pq.k

    def scores(self, queries: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
        """(B, n_rows) ADC inner products."""
        luts = self._luts(queries)
        out = torch.empty(luts.shape[1], self.n_rows)
        for start in range(0, self.n_rows, chunk):
            stop = min(self.n_rows, start + chunk)
            out[:, start:stop] = self._block(luts, start, stop)
        return out

    def top_k(self, queries: torch.Tensor, k: int, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (ADC scores, item rows) per query, best first, one chunk of scores at a time."""
        luts = self._luts(queries)
        return chunked_top_k(lambda s, e: self._block(luts, s, e), self.n_rows, luts.shape[1], k, chunk)
