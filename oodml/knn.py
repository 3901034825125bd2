"""Exact k nearest neighbours of every row among the other rows, from half the similarity matrix.

When the queries are the reference set, the score matrix is symmetric: the
score of i against j is the score of j against i.  The search walks the upper
triangle of the matrix, first the square B x B blocks on the diagonal, then
B x 4B rectangles above them, and computes each once, as one float32 matrix
product; a block's rows offer their candidates to the row queries and its
columns to the column queries.  That is N(N + B)/2 dot products instead of N^2
for N rows and blocks of B.

Selection.  Every query keeps a buffer of its k best candidates so far, under
one strict total order: higher score first, then lower index.  The best k of a
union is the best k of (best k of one part) and the other part, so merging block
by block gives exactly the brute-force answer, whatever the block size, the
order of the blocks or the number of threads.  Ties are not left to
``torch.topk``: a row whose k-th and (k+1)-th scores are equal is sorted in
full by (score, index).  The query is excluded by index, never by its score.

Pruning.  A candidate scoring below a query's current k-th score can never
enter its best k, so each block is first reduced by one comparison against
the queries' k-th scores; only the few survivors are merged (a query's first
block, where its buffer is still empty, uses that block's own k-th score).
The merge cost then grows with the survivors, not with k x blocks.  Survivors
number about k(1 + ln(N/B)) per query; for large k (map@1000 asks for 1000)
they and their bookkeeping outweigh the saved products, so above
``MAX_PRUNED_K`` the search runs row by row instead: every query against all N
rows, the same selection (:func:`_best_k`), N^2 dot products.

Scores.  Cosine similarity of L2-normalised rows (``normalize=True``), or minus
the squared Euclidean distance, computed as ``2 x.y - |y|^2 - |x|^2`` in that
order of float operations for query x and candidate y, as the row-by-row
search computed it.  The result is exact for the float32 scores as the BLAS
computes them; a BLAS may round one dot product differently in products of
different shapes (MKL does, in the last bit), so on real-valued data two
candidates within a rounding error of each other can swap between block sizes,
as they could between two chunkings of any blocked search.  On data whose dot
products are exact in float32 the result does not depend on the block size at
all (tested).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DEFAULT_BLOCK = 2048  # rows per block: a 2048 x 2048 float32 block is 16 MiB, within a large L3
ROW_SCORES = 32 << 20  # the row-by-row search's scores per step (128 MiB of float32)
MAX_PRUNED_K = 128  # above this the row-by-row search is faster (crossover about 150-200 at N = 20,000)
TILE = 64  # candidates ruled out together by their maximum score
PANEL = 4  # off-diagonal rectangles are B x 4B


def _block_scores(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(R, d) x (C, d) -> (R, C) float32 dot products: the only place the search multiplies."""
    return rows @ cols.T


def _best_first(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted by score descending, then index ascending (two stable sorts)."""
    by_index = torch.sort(indices, dim=1, stable=True)
    values = values.gather(1, by_index.indices)
    by_score = torch.sort(values, dim=1, descending=True, stable=True)
    return by_score.values, by_index.values.gather(1, by_score.indices)


def _best_k(values: torch.Tensor, indices: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row of (R, W) candidates, W > k, by (score desc, index asc); unordered within a row.

    ``indices`` (R, W) int, or None for the column positions.  Indices must be distinct within a
    row, except padding (score -inf, index above every real index), which then never displaces a
    real candidate.
    """
    if indices is None:
        indices = torch.arange(values.shape[1], device=values.device, dtype=torch.int32).expand_as(values)
    top, position = torch.topk(values, k + 1, dim=1, sorted=False)
    floor, floor_at = top.min(1)
    # Unless the (k+1)-th score ties the k-th, the k best are the k + 1 largest minus the smallest.
    tied = (top == floor[:, None]).sum(1) > 1
    keep = torch.ones_like(top, dtype=torch.bool)
    keep[torch.arange(len(top), device=top.device), floor_at] = False
    position = position[keep].view(len(top), k)
    best_values, best_indices = values.gather(1, position), indices.gather(1, position)
    if tied.any():
        rows = tied.nonzero()[:, 0]
        v, i = _best_first(values[rows], indices[rows])
        best_values[rows], best_indices[rows] = v[:, :k], i[:, :k]
    return best_values, best_indices


def _at_least(scores: torch.Tensor, floor: torch.Tensor,
              by_column: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of a block that reach their query's floor: (query, candidate, score), grouped by query.

    ``scores`` is (queries, candidates), or (candidates, queries) with ``by_column``; ``floor`` is per
    query.  Entries equal to the floor count (>=: an equal score with a lower index can still enter).
    Most of a block falls short, so whole tiles of ``TILE`` candidates are ruled out by their maximum
    first (one vectorised pass); only the tiles that reach the floor are compared entry by entry.
    A ragged end of fewer than ``TILE`` candidates is compared entry by entry.
    """
    along = 0 if by_column else 1  # the candidate axis
    c = scores.shape[along]
    whole = c - c % TILE
    parts = []
    if whole:
        if by_column:
            tiles = scores[:whole].view(whole // TILE, TILE, -1)          # (tile, offset, query)
            tile, query = (tiles.amax(1) >= floor[None, :]).nonzero(as_tuple=True)
            values = tiles[tile, :, query]                                   # (hot, TILE)
        else:
            tiles = scores[:, :whole].view(len(scores), whole // TILE, TILE)  # (query, tile, offset)
            query, tile = (tiles.amax(2) >= floor[:, None]).nonzero(as_tuple=True)
            values = tiles[query, tile]                                      # (hot, TILE)
        hot, offset = (values >= floor[query][:, None]).nonzero(as_tuple=True)
        parts.append((query[hot], tile[hot] * TILE + offset, values[hot, offset]))
    if whole < c:
        tail = scores[whole:].T if by_column else scores[:, whole:]         # (query, tail)
        query, offset = (tail >= floor[:, None]).nonzero(as_tuple=True)
        parts.append((query, offset + whole, tail[query, offset]))
    query, candidate, values = (torch.cat(p) for p in zip(*parts, strict=True))
    if by_column or len(parts) > 1:
        query, order = torch.sort(query, stable=True)
        candidate, values = candidate[order], values[order]
    return query, candidate, values


class _Buffers:
    """The k best candidates of every query so far: scores (N, k) float32 and indices (N, k) int32."""

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.k, self.padding = k, n
        self.values = torch.full((n, k), -torch.inf, device=device)
        self.indices = torch.full((n, k), n, dtype=torch.int32, device=device)
        self.kth = torch.full((n,), -torch.inf, device=device)  # the k-th best score; -inf until k are seen

    def offer(self, scores: torch.Tensor, query_start: int, candidate_start: int, *, by_column: bool = False,
              diagonal: bool = False) -> None:
        """Merge one contiguous block of scores into its queries' buffers.

        ``scores`` is (queries, candidates), or (candidates, queries) with ``by_column``, so the
        transposed half of a block is read in place.  ``diagonal``: the block's queries are its
        candidates, so entry (i, i) is the query itself: it is left out (and set to -inf in place).
        """
        if diagonal:
            scores.fill_diagonal_(-torch.inf)
        scores_of = scores.T if by_column else scores  # (queries, candidates) view
        q, c = scores_of.shape
        floor = self.kth[query_start:query_start + q].clone()
        empty = (floor == -torch.inf).nonzero()[:, 0]
        if len(empty):  # a query's first block: only that block's own k best (with ties) can enter
            first = scores_of if len(empty) == q else scores_of[empty]
            floor[empty] = torch.topk(first, min(self.k, c), dim=1).values[:, -1]
        query, candidate, values = _at_least(scores, floor, by_column)
        if diagonal:
            other = query != candidate
            query, candidate, values = query[other], candidate[other], values[other]
        if len(query) == 0:
            return
        target, counts = torch.unique_consecutive(query, return_counts=True)
        group = torch.repeat_interleave(torch.arange(len(target), device=query.device), counts)
        slot = torch.arange(len(query), device=query.device) - (torch.cumsum(counts, 0) - counts)[group]
        width = int(counts.max())
        offered = torch.full((len(target), width), -torch.inf, device=scores.device)
        offered_indices = torch.full((len(target), width), self.padding, dtype=torch.int32, device=scores.device)
        offered[group, slot] = values
        offered_indices[group, slot] = (candidate + candidate_start).to(torch.int32)
        target = target + query_start
        merged, merged_indices = _best_k(torch.cat([self.values[target], offered], 1),
                                         torch.cat([self.indices[target], offered_indices], 1), self.k)
        self.values[target], self.indices[target] = merged, merged_indices
        self.kth[target] = merged.min(1).values

    def ranked(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop as (rows, k) int64 neighbour indices, best first."""
        _, indices = _best_first(self.values[start:stop], self.indices[start:stop])
        return indices.long()


def knn_chunks(embeddings: torch.Tensor, k: int, *, normalize: bool = True,
               chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Exact k nearest neighbours of every row among the *other* rows, one block of rows at a time.

    Args:
        embeddings: (N, d) float tensor; the search runs on its device, in float32.
        k: neighbours per row, capped at N - 1 (so there is never padding to count).
        normalize: cosine similarity of L2-normalised rows; else Euclidean distance.
        chunk: the block size B (the rows yielded at a time, the side of a diagonal block);
            default 2048.  It changes neither the result nor its order.

    Yields:
        ``(start, indices)``, rows ``start .. start + len(indices)`` in order, with
        ``indices`` (rows, k) int64, nearest first, ties to the lower index.

    Memory: for k <= ``MAX_PRUNED_K``, (N, k) buffers (8 bytes per entry) plus a few
    B x 4B float32 blocks (64 MiB each at the default B); above, 192 MiB of scores and
    indices per step.
    """
    x = embeddings.float()
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    n = x.shape[0]
    k = min(k, n - 1)
    block = chunk or max(1, min(n, DEFAULT_BLOCK))
    if k > MAX_PRUNED_K:
        yield from _by_rows(x, k, normalize, block)
    else:
        yield from _by_blocks(x, k, normalize, block)


def _by_rows(x: torch.Tensor, k: int, normalize: bool, block: int) -> Iterator[tuple[int, torch.Tensor]]:
    """The search for large k: each query against all N rows, B queries at a time (N^2 scores)."""
    n = x.shape[0]
    squares = (x * x).sum(1)
    block = min(block, max(1, ROW_SCORES // n))
    for i in range(0, n, block):
        scores = _block_scores(x[i:i + block], x)
        if not normalize:
            scores = 2 * scores - squares[None, :] - squares[i:i + block, None]
        positions = torch.arange(len(scores), device=x.device)
        scores[positions, positions + i] = -torch.inf  # the query itself: below every other row...
        indices = torch.arange(n, device=x.device, dtype=torch.int32).repeat(len(scores), 1)
        indices[positions, positions + i] = n          # ...including any at -inf, by index
        values, indices = _best_k(scores, indices, k)
        yield i, _best_first(values, indices)[1].long()


def _by_blocks(x: torch.Tensor, k: int, normalize: bool, block: int) -> Iterator[tuple[int, torch.Tensor]]:
    """The search for small k: each block of the upper triangle once, merged both ways."""
    n = x.shape[0]
    squares = (x * x).sum(1)
    buffers = _Buffers(n, k, x.device)
    starts = range(0, n, block)
    # The diagonal blocks first: every query then starts from a k-th score over its own block,
    # read along rows, and later blocks are mostly ruled out tile by tile.
    for i in starts:
        scores = _block_scores(x[i:i + block], x[i:i + block])
        if not normalize:
            scores = 2 * scores - squares[None, i:i + block] - squares[i:i + block, None]
        buffers.offer(scores, i, i, diagonal=True)
    for i in starts:
        rows, sq_rows = x[i:i + block], squares[i:i + block]
        for j in range(i + block, n, PANEL * block):  # B x PANEL*B rectangles: fewer, larger tensor operations
            scores = _block_scores(rows, x[j:j + PANEL * block])
            if normalize:
                by_row = by_column = scores
            else:
                sq_cols = squares[j:j + PANEL * block]
                by_row = 2 * scores - sq_cols[None, :] - sq_rows[:, None]
                by_column = 2 * scores - sq_rows[:, None] - sq_cols[None, :]
            buffers.offer(by_row, i, j)
            buffers.offer(by_column, j, i, by_column=True)
        # Row block i has now met every column: blocks (i', i) for i' < i came earlier.
        yield i, buffers.ranked(i, min(i + block, n))


def knn(embeddings: torch.Tensor, k: int, *, normalize: bool = True, chunk: int | None = None) -> torch.Tensor:
    """All of :func:`knn_chunks` at once: (N, min(k, N - 1)) int64 neighbour indices."""
    return torch.cat([idx for _, idx in knn_chunks(embeddings, k, normalize=normalize, chunk=chunk)])
