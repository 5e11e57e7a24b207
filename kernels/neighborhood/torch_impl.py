"""Fast neighborhood attention in plain PyTorch (the default backend without Triton), autograd by PyTorch.

Algorithm ("tiled box"):

1. Dilation groups become a batch-like dimension: on an axis of length L with dilation d, group ``g = x mod d``
   holds the in-group positions ``x' = x // d < ceil((L - g) / d)``; groups may differ in length by one.
2. Each group is cut into query tiles of ``T`` in-group positions per axis. Window starts and ends are
   non-decreasing in the query, so the keys of a whole tile lie in one box of ``min(T + k + s - 2, M)`` in-group
   positions per axis (``M = ceil(L / d)``; ``T + k - s`` when tiles hold whole stride groups), the same size
   for every tile.
3. Queries, key boxes and value boxes are gathered as whole token rows (``heads * D`` values, one
   ``index_select`` each, straight from the caller's heads-last layout), an additive ``[tiles, heads, Tq, Tk]``
   mask (``-inf`` outside the window, the relative-position bias inside) encodes the exact windows, and one
   batched :func:`torch.nn.functional.scaled_dot_product_attention` per image does the rest on views.

Slots of a tile past the end of its group are filled with the last query of the group (same window), so no row
of the mask is empty; their outputs are never read back.

Tile size is the only policy (:func:`choose_tile`): a tile covering the whole group gives one dense masked
attention per group, and when the window is the whole map the gathers and the mask disappear (plain attention).
Index tables and masks depend on shapes and arguments only; they are cached per (shape, arguments, device). The
mask with the bias also depends on the ``rpb`` values: when ``rpb`` needs no gradient (inference) it is cached
too, and each use checks the stored table against the current one (:class:`_BiasCache`).
Everything runs in fp32 (fp64 for fp64 inputs), autocast or not; the output is cast back to the query's dtype.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .indexing import group_length, window_end, window_start

__all__ = ['na_torch', 'choose_tile']

# least-padding rule: largest query tile per axis (in-group positions) by rank, and how many smaller sizes are
# tried to avoid padding
TILE = {1: 64, 2: 8, 3: 4}
TILE_CHOICES = {1: 32, 2: 3, 3: 2}
# one dense masked attention per group when it does at most this many times the work of the tiled boxes
DENSE_WORK_RATIO = 2.0
# 2-D inference cost model: largest tile per axis besides the whole group, and microseconds per SDPA problem,
# per logit and per gathered row at head_dim 32 (_tile_cost)
MAX_TILE = 16
COST_PROBLEM_US = 2.0
COST_LOGIT_US = 0.0032
COST_ROW_US = 0.0145
# gathered q/k/v rows of the images processed together (at least one image)
_CHUNK_BYTES = 8 * 2 ** 20
# largest mask copied for all images of a chunk (one SDPA call); beyond it, one SDPA call per image
_MASK_COPY_BYTES = 8 * 2 ** 20


class _Plan(NamedTuple):
    """Index tables of one (shape, arguments) combination.

    ``q_src``/``kv_src``/``out_slot`` are None where the gather would be the identity.
    """
    tiles: int  # groups x tiles: the batch-like dimension
    tile_q: int  # queries per tile
    tile_k: int  # keys per box
    q_src: torch.Tensor | None  # [tiles * tile_q] flat query of each slot
    kv_src: torch.Tensor | None  # [tiles * tile_k] flat key of each box entry
    out_slot: torch.Tensor | None  # [N] slot of each query
    mask: torch.Tensor | None  # [tiles, 1, tile_q, tile_k] 0 inside the window, -inf outside; None: no mask (or rpb)
    bias_index: torch.Tensor | None  # [tiles * tile_q * tile_k] flat index into rpb[h].view(-1), P (= its size) outside


def na_torch(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        is_causal: tuple[bool, ...],
        rpb: torch.Tensor | None,
        scale: float,
        return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Neighborhood attention by tiled boxes and batched SDPA; arguments already validated and normalised.

    Args:
        query: ``[B, *spatial, heads, D]``, any strides.
        key: ``[B, *spatial, heads_kv, D]`` with ``heads % heads_kv == 0``.
        value: ``[B, *spatial, heads_kv, Dv]``.
        kernel_size, dilation, stride, is_causal: one entry per spatial axis.
        rpb: ``[heads, 2k_0 - 1, ...]`` of any floating dtype, or None; added to the scaled logits.
        scale: logit scale.
        return_lse: also compute the log-sum-exp.

    Returns:
        ``(out, lse)``: out ``[B, *spatial, heads, Dv]`` in the query's dtype; lse ``[B, *spatial, heads]`` fp32
        (natural log of the sum of exp of the scaled, biased logits over the window), or None unless
        ``return_lse``. Computed in fp32 (fp64 for fp64 inputs).
    """
    spatial = tuple(query.shape[1:-2])
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    inference = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                     for t in (query, key, value, rpb)))
    tile = choose_tile(spatial, kernel_size, dilation, stride, query.shape[-1], inference)
    args = (spatial, kernel_size, dilation, stride, is_causal, tile, rpb is not None, compute, query.device)
    # the cache holds tensors made outside any graph: under torch.compile the tables are traced instead
    plan = _build_plan(*args) if torch.compiler.is_compiling() else _cached_plan(*args)
    # autocast would run SDPA and the logits in half precision: the contract is fp32 (fp64) compute
    with torch.autocast(query.device.type, enabled=False):
        return _attend(query, key, value, plan, rpb, scale, return_lse, compute)


def choose_tile(
        spatial: tuple[int, ...],
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        head_dim: int = 32,
        inference: bool = False,
) -> tuple[int, ...]:
    """Query tile per axis, in in-group positions (a tile equal to the group length means no tiling).

    2-D inference (no autograd): the tile of least estimated forward cost (:func:`_tile_cost`) among every
    combination of per-axis tiles from 1 to ``MAX_TILE`` and the whole group; 25% faster than the rule below on
    the NAT/DiNAT stage shapes. Otherwise (training, 1-D and 3-D, where the forward cost model does not hold:
    smaller tiles make the backward's scatter of overlapping boxes slower) :func:`_least_padding_tile`.
    """
    if inference and len(spatial) == 2:
        # sizes made concrete: under torch.compile the torch path specialises on the resolution
        return _cheapest_tile(tuple(int(x) for x in spatial), tuple(kernel_size), tuple(dilation), tuple(stride),
                              int(head_dim))
    return _least_padding_tile(spatial, kernel_size, dilation, stride)


@functools.lru_cache(maxsize=256)
def _cheapest_tile(spatial, kernel_size, dilation, stride, head_dim) -> tuple[int, ...]:
    per_axis = []
    for size, k, d, s in zip(spatial, kernel_size, dilation, stride):
        longest = -(-size // d)
        tiles = {t for t in range(1, min(MAX_TILE, longest) + 1) if _box_size(t, k, s, longest) < longest}
        per_axis.append(sorted(tiles | {longest}, reverse=True))
    return min(itertools.product(*per_axis),
               key=lambda tile: _tile_cost(tile, spatial, kernel_size, dilation, stride, head_dim))


def _tile_cost(tile, spatial, kernel_size, dilation, stride, head_dim) -> float:
    """Estimated CPU time of one head in microseconds: per SDPA problem, per logit and per gathered row.

    Fitted on timings of this backend at NAT/DiNAT stage shapes (one core, fp32, head_dim 32; the chosen tile was
    within 8% of the fastest of 50-90 tiles at every shape); the logit and row terms scale with ``head_dim``.
    """
    tiles = tile_q = tile_k = 1
    for t, size, k, d, s in zip(tile, spatial, kernel_size, dilation, stride):
        longest = -(-size // d)
        tiles *= d * -(-longest // t)
        tile_q *= t
        tile_k *= _box_size(t, k, s, longest)
    per_dim = head_dim / 32
    return tiles * (COST_PROBLEM_US + per_dim * (COST_LOGIT_US * tile_q * tile_k
                                                  + COST_ROW_US * (tile_q + 2 * tile_k)))


def _least_padding_tile(
        spatial: tuple[int, ...],
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
) -> tuple[int, ...]:
    """The tile that pads least, or no tiling when dense attention is cheap enough.

    Per axis, the tile size among the ``TILE_CHOICES`` sizes up to ``TILE[rank]`` that pads the group least
    (ties: the largest), keeping only multiples of the stride (the stride itself when none is in range); an axis
    whose box would span the whole group is not tiled. When the dense attention of a whole group costs at most
    ``DENSE_WORK_RATIO`` times the tiled work (query slots x box keys), nothing is tiled: one large matmul beats
    many small ones.
    """
    rank = len(spatial)
    longest = tuple(-(-size // d) for size, d in zip(spatial, dilation))
    high = TILE[rank]
    low = max(high - TILE_CHOICES[rank] + 1, 1)
    tile, slots, box = [], 1, 1
    for m, k, s in zip(longest, kernel_size, stride):
        # tiles made of whole stride groups need smaller boxes (_box_size)
        candidates = [c for c in range(low, high + 1) if c % s == 0] or [s * max(high // s, 1)]
        # the tile that pads the group least, the largest on ties (a loop: sizes may be symbolic under torch.compile)
        t = candidates[0]
        for c in candidates[1:]:
            if -(-m // c) * c <= -(-m // t) * t:
                t = c
        if _box_size(t, k, s, m) >= m:
            t = m
        tile.append(t)
        slots *= -(-m // t) * t
        box *= _box_size(t, k, s, m)
    if math.prod(longest) ** 2 <= DENSE_WORK_RATIO * slots * box:
        return longest
    return tuple(tile)


def _box_size(tile: int, kernel_size: int, stride: int, longest: int) -> int:
    """In-group keys per axis that hold the windows of any ``tile`` consecutive queries starting at a tile border.

    Window starts grow by at most one per query, plus ``stride - 1`` where a tile cuts a stride group; a tile made
    of whole stride groups spans ``tile - stride`` leaders. Never more than the longest group.
    """
    if tile % stride == 0:
        return min(tile - stride + kernel_size, longest)
    return min(tile + kernel_size + stride - 2, longest)


def _attend(query, key, value, plan: _Plan, rpb, scale, return_lse, compute):
    """Neighborhood attention of a batch, a few images at a time; every tensor in the caller's heads-last layout.

    Images go through in chunks of at most ``_CHUNK_BYTES`` of gathered rows (at least one image), so that what a
    chunk gathers is still in cache when SDPA reads it: on large maps this is twice as fast as gathering the whole
    batch first.
    """
    batch, *spatial, heads, dim = query.shape
    heads_kv = key.shape[-2]
    if heads_kv != heads:
        # grouped-query attention: each query head gets its own copy of its kv head (same work, simpler layout)
        rep = heads // heads_kv
        key, value = (t.unsqueeze(-2).expand(*t.shape[:-1], rep, t.shape[-1]).reshape(*t.shape[:-2], heads, -1)
                      for t in (key, value))
    mask = plan.mask if rpb is None else _BIAS_CACHE.get(rpb, plan, compute)  # [tiles, heads or 1, Tq, Tk]
    itemsize = torch.finfo(compute).bits // 8
    image_bytes = plan.tiles * (plan.tile_q * dim + plan.tile_k * (dim + value.shape[-1])) * heads * itemsize
    step = batch if torch.compiler.is_compiling() else max(1, min(batch, _CHUNK_BYTES // image_bytes))
    chunks = [_attend_images(query[i:i + step], key[i:i + step], value[i:i + step], plan, mask, scale, return_lse,
                             compute) for i in range(0, batch, step)]
    out, lse = chunks[0] if len(chunks) == 1 else (torch.cat(part) if part[0] is not None else None
                                                   for part in zip(*chunks))
    return out.to(query.dtype), lse


def _attend_images(query, key, value, plan: _Plan, mask, scale, return_lse, compute):
    """Gather tiles, SDPA, scatter back for a few images (``heads_kv == heads``).

    Gathering whole token rows (``heads * D`` contiguous values) tile by tile makes an image's SDPA problems
    ``[tiles, heads, rows, D]`` plain views, and PyTorch's CPU flash kernel writes its output rows in that same
    order, so the output gather yields the caller's ``[B, *spatial, heads, Dv]`` directly: one copy in per
    tensor and one out. Where the ``[tiles, heads, Tq, Tk]`` mask of all images together would exceed
    ``_MASK_COPY_BYTES``, one SDPA call per image lets one mask serve every image without a copy per image; otherwise
    (and while compiling, so that the graph does not grow with B) one call with the mask expanded.

    Returns:
        ``(out, lse)``: out ``[B, *spatial, heads, Dv]`` in the compute dtype, lse fp32 or None.
    """
    batch, *spatial, heads, _ = query.shape
    n = math.prod(spatial)
    tiles, tile_q, tile_k = plan.tiles, plan.tile_q, plan.tile_k
    q, k, v = (
        _gather_rows(t.to(compute), index, batch, n, heads).view(batch, tiles, rows, heads, -1).transpose(2, 3)
        for t, index, rows in ((query, plan.q_src, tile_q), (key, plan.kv_src, tile_k), (value, plan.kv_src, tile_k))
    )  # [B, tiles, heads, rows, D]
    mask_bytes = 0 if mask is None else batch * mask.numel() * mask.element_size()
    if batch == 1 or mask_bytes <= _MASK_COPY_BYTES or torch.compiler.is_compiling():
        # one call; the mask is copied per image (small maps: cheaper than one call per image)
        flat = [t.reshape(batch * tiles, heads, *t.shape[-2:]) for t in (q, k, v)]
        flat_mask = None if mask is None else mask.expand(batch, *mask.shape).reshape(batch * tiles, *mask.shape[1:])
        out = F.scaled_dot_product_attention(*flat, attn_mask=flat_mask, scale=scale)
        out = out.view(batch, tiles, heads, tile_q, -1).transpose(2, 3)
    else:
        out = torch.stack([F.scaled_dot_product_attention(q[b], k[b], v[b], attn_mask=mask, scale=scale).transpose(1, 2)
                           for b in range(batch)])  # [B, tiles, Tq, heads, Dv]
    out = _untile(out, plan, spatial)
    if not return_lse:
        return out, None
    # a second pass over the logits keeps the SDPA kernel for the output and autograd for both
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + mask
    lse = torch.logsumexp(logits, dim=-1).unsqueeze(-1)  # [B, tiles, heads, Tq, 1]
    return out, _untile(lse.transpose(2, 3), plan, spatial).squeeze(-1).float()


def _gather_rows(x: torch.Tensor, index: torch.Tensor | None, batch: int, n: int, heads: int) -> torch.Tensor:
    """``[B, *spatial, heads, C]`` -> ``[B, len(index), heads, C]``: the token rows at ``index`` (all if None)."""
    rows = x.reshape(batch, n, heads * x.shape[-1])  # a view for contiguous tensors and slices of a qkv tensor
    if index is not None:
        rows = rows.index_select(1, index)
    return rows.view(batch, -1, heads, x.shape[-1])


def _untile(x: torch.Tensor, plan: _Plan, spatial: list) -> torch.Tensor:
    """``[B, tiles, Tq, heads, C]`` -> ``[B, *spatial, heads, C]``."""
    batch, _, _, heads, channels = x.shape
    rows = x.reshape(batch, plan.tiles * plan.tile_q, heads * channels)
    if plan.out_slot is not None:
        rows = rows.index_select(1, plan.out_slot)
    return rows.view(batch, *spatial, heads, channels)


def _biased_mask(rpb: torch.Tensor, plan: _Plan, compute: torch.dtype) -> torch.Tensor:
    """The additive attention mask with the relative-position bias inside the windows.

    Returns:
        ``[tiles, heads, Tq, Tk]``: ``rpb`` at each (slot, box entry) inside the window, ``-inf`` outside.
    """
    heads = rpb.shape[0]
    # one gather from the table extended by a -inf entry: the window mask costs nothing more
    table = torch.cat([rpb.reshape(heads, -1).to(compute), rpb.new_full((heads, 1), float('-inf'), dtype=compute)], 1)
    bias = table.index_select(1, plan.bias_index)  # [heads, tiles * Tq * Tk]
    return bias.view(heads, plan.tiles, plan.tile_q, plan.tile_k).transpose(0, 1).contiguous()


class _BiasCache:
    """Biased masks of the last calls whose ``rpb`` needs no gradient (inference), keyed by the table's values.

    The mask is a pure function of the plan and the table, and building it costs about as much as a small
    attention; in inference the same few tables come back every call. An entry is found by the table's storage
    and the plan, then used only if the stored copy of the table is still equal to it: an updated, reloaded or
    reallocated table can never give a stale mask. Least recently used entries go first once the masks exceed
    ``max_bytes`` (environment ``ZOO_NA_BIAS_CACHE_MB``, default 256; 0 disables the cache).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict = OrderedDict()  # key -> (plan, table copy, mask)
        self.bytes = 0

    def get(self, rpb: torch.Tensor, plan: _Plan, compute: torch.dtype) -> torch.Tensor:
        if (self.max_bytes <= 0 or torch.compiler.is_compiling()
                or (rpb.requires_grad and torch.is_grad_enabled())):
            return _biased_mask(rpb, plan, compute)
        # an entry holds its plan, so the plan's id cannot be reused while the entry lives
        key = (rpb.data_ptr(), rpb.shape, rpb.dtype, rpb.device, id(plan), compute)
        entry = self.entries.get(key)
        if entry is not None and entry[0] is plan and torch.equal(entry[1], rpb):
            self.entries.move_to_end(key)
            return entry[2]
        with torch.inference_mode(False):  # as _cached_plan: a cached mask may serve a later training call
            mask = _biased_mask(rpb, plan, compute)
            self._put(key, plan, rpb.detach().clone(), mask)
        return mask

    def _put(self, key, plan: _Plan, table: torch.Tensor, mask: torch.Tensor) -> None:
        size = mask.numel() * mask.element_size()
        if size > self.max_bytes:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old[2].numel() * old[2].element_size()
        self.entries[key] = (plan, table, mask)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, _, evicted) = self.entries.popitem(last=False)
            self.bytes -= evicted.numel() * evicted.element_size()


_BIAS_CACHE = _BiasCache(int(float(os.environ.get('ZOO_NA_BIAS_CACHE_MB', '256')) * 2 ** 20))


def _axis_tables(length: int, kernel_size: int, dilation: int, stride: int, is_causal: bool, tile: int,
                 device: torch.device):
    """Tables of one axis; slots are laid out ``[d, n_tiles, tile]`` and boxes ``[d, n_tiles, box]``.

    Returns:
        q_src ``[d, n_tiles, tile]`` original coordinate of each slot's query; kv_src ``[d, n_tiles, box]``
        original coordinate of each box entry (clamped into the axis; such entries are outside every window);
        allowed ``[d, n_tiles, tile, box]``; rel ``[d, n_tiles, tile, box]`` the RPB index on this axis
        (clamped into the table); out_slot ``[3, length]`` (group, tile, position in tile) of each coordinate.
    """
    longest = -(-length // dilation)
    n_tiles = -(-longest // tile)
    box = _box_size(tile, kernel_size, stride, longest)
    group = torch.arange(dilation, device=device).view(dilation, 1, 1)
    glen = group_length(length, dilation, group)
    local = torch.arange(n_tiles * tile, device=device).view(1, n_tiles, tile)
    pos = torch.minimum(local, glen - 1)  # [d, n_tiles, tile]; slots past the group repeat its last query
    start = window_start(pos, glen, kernel_size, stride, is_causal)
    end = window_end(pos, glen, kernel_size, stride, is_causal)
    # windows are monotone in the query: the first slot's start bounds the tile's box from below
    box_start = torch.clamp(start[:, :, :1], max=longest - box)
    keys = box_start + torch.arange(box, device=device)  # [d, n_tiles, box]
    keys_q = keys[:, :, None, :]
    allowed = (keys_q >= start[..., None]) & (keys_q < end[..., None])
    rel = (keys_q - pos[..., None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    q_src = pos * dilation + group
    kv_src = torch.clamp(keys * dilation + group, max=length - 1)
    coord = torch.arange(length, device=device)
    out_slot = torch.stack([coord % dilation, (coord // dilation) // tile, (coord // dilation) % tile])
    return q_src, kv_src, allowed, rel, out_slot, (dilation, n_tiles, tile, box)


def _place(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """View a per-axis table ``[p_0, p_1, ...]`` in the joint layout ``[p_0 of every axis, p_1 of every axis, ...]``."""
    shape = [1] * (t.dim() * rank)
    for j, size in enumerate(t.shape):
        shape[j * rank + axis] = size
    return t.reshape(shape)


def _build_plan(spatial, kernel_size, dilation, stride, is_causal, tile, with_rpb, dtype, device) -> _Plan:
    rank = len(spatial)
    sizes = [None] * rank
    q_src = kv_src = rpb_index = out_slot = 0
    allowed = True
    spatial_stride = 1
    rpb_stride = 1
    # fill axis by axis from the last one so row-major strides accumulate
    per_axis = []
    for axis in reversed(range(rank)):
        tables = _axis_tables(spatial[axis], kernel_size[axis], dilation[axis], stride[axis], is_causal[axis],
                              tile[axis], device)
        per_axis.append((axis, tables))
        a_q, a_kv, a_allowed, a_rel, _, sizes[axis] = tables
        q_src = q_src + _place(a_q, axis, rank) * spatial_stride
        kv_src = kv_src + _place(a_kv, axis, rank) * spatial_stride
        allowed = _place(a_allowed, axis, rank) & allowed
        rpb_index = rpb_index + _place(a_rel, axis, rank) * rpb_stride
        spatial_stride *= spatial[axis]
        rpb_stride *= 2 * kernel_size[axis] - 1

    groups, n_tiles, tiles_q, boxes = (tuple(s[j] for s in sizes) for j in range(4))
    slot_layout = groups + n_tiles + tiles_q
    slot_strides = [math.prod(slot_layout[j + 1:]) for j in range(len(slot_layout))]
    for axis, tables in per_axis:
        g, t, i = tables[4]
        slot = g * slot_strides[axis] + t * slot_strides[rank + axis] + i * slot_strides[2 * rank + axis]
        shape = [1] * rank
        shape[axis] = spatial[axis]
        out_slot = out_slot + slot.view(shape)

    tiles = math.prod(groups) * math.prod(n_tiles)
    tile_q, tile_k = math.prod(tiles_q), math.prod(boxes)
    n = math.prod(spatial)
    identity_q = tiles == 1 and tile_q == n
    identity_kv = tiles == 1 and tile_k == n
    # windows are whole groups when every group has exactly k tokens and one tile
    full_windows = all(
        t == -(-size // d) and size % d == 0 and k * d == size and not c
        for size, k, d, t, c in zip(spatial, kernel_size, dilation, tile, is_causal))
    mask = None
    if not with_rpb and not full_windows:
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float('-inf'))
        mask = mask.reshape(tiles, 1, tile_q, tile_k)
    return _Plan(
        tiles=tiles,
        tile_q=tile_q,
        tile_k=tile_k,
        q_src=None if identity_q else q_src.reshape(-1),
        kv_src=None if identity_kv else kv_src.reshape(-1),
        out_slot=None if identity_q else out_slot.reshape(-1),
        mask=mask,
        bias_index=torch.where(allowed, rpb_index, rpb_stride).reshape(-1) if with_rpb else None,
    )


@functools.lru_cache(maxsize=16)
def _cached_plan(*args) -> _Plan:
    # built outside inference mode: a table made inside could not be saved for backward by a later training call
    with torch.inference_mode(False):
        return _build_plan(*args)
