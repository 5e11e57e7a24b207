"""Window and grid partitions of a channels-last map, for any map size (Swin, MaxViT, Agent-/InLine-Swin).

* :func:`window_partition` / :func:`window_reverse`: non-overlapping ``wh x ww`` windows of contiguous tokens
  (Swin's W-MSA, MaxViT's block attention), optionally cyclically shifted by ``shift_size`` (Swin's SW-MSA).
  :func:`window_attn_mask` is the additive mask of the shifted windows (Swin's: 0 within a region, -100 across).
* :func:`grid_partition` / :func:`grid_reverse`: MaxViT's grid attention, ``gh x gw`` windows of tokens strided by
  ``(Hp / gh, Wp / gw)`` over the whole map.

Windows are ``[B * num_windows, wh, ww, C]`` in timm's order (batch-major, then window rows, then window columns),
so the window layouts equal timm's ``swin_transformer.window_partition`` and ``maxxvit.window_partition`` /
``grid_partition`` wherever those run.

Any map size: a map not divisible by the window (grid) is zero-padded on the bottom/right to ``(Hp, Wp)``, the next
multiples, before partitioning, and the reverse crops back to ``(H, W)``. Padded tokens are ordinary zero tokens
(they become keys whose k and v are the projection biases); nothing masks them, as in the official Swin detection
and segmentation code. With a shift the order is pad, then roll (official Swin detection, ``mmdet``-style), and
:func:`window_attn_mask` is built for the padded map; timm's Swin rolls before padding, which only differs for sizes
not divisible by the window.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple

from ._checks import shape_str

__all__ = [
    'window_partition', 'window_reverse', 'window_attn_mask', 'grid_partition', 'grid_reverse', 'padded_size',
    'pad_needed', 'is_exporting',
]

Size2 = Union[int, Tuple[int, int]]


def _size2(value: Size2, name: str) -> Tuple[int, int]:
    size = tuple(int(v) for v in to_2tuple(value))
    if len(size) != 2 or any(v < 1 for v in size):
        raise ValueError(f'{name} must be an int or (h, w) pair of ints >= 1, got {name}={value!r}')
    return size


def _shift2(shift_size: Size2, window_size: Tuple[int, int]) -> Tuple[int, int]:
    shift = tuple(int(v) for v in to_2tuple(shift_size))
    if len(shift) != 2 or any(not 0 <= s < w for s, w in zip(shift, window_size)):
        raise ValueError(f'shift_size must be in [0, window_size) per axis (window_size={window_size}), '
                         f'got shift_size={shift_size!r}')
    return shift


def _check_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f'x must be a channels-last map [B, H, W, C], got shape {tuple(x.shape)}')


def padded_size(size: Tuple[int, int], window_size: Size2) -> Tuple[int, int]:
    """``size`` rounded up to multiples of ``window_size`` (a window or a grid), per axis."""
    wh, ww = _size2(window_size, 'window_size')
    return padded_size_(size, (wh, ww))


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()`` (True while ``torch.export`` traces), False in TorchScript."""
    if torch.jit.is_scripting():  # a static branch: TorchScript compiles only this one
        return False
    else:
        return torch.compiler.is_exporting()


def pad_needed(pad_b: int, pad_r: int) -> bool:
    """Whether a map padded by ``(pad_b, pad_r)`` must take its pad (and later crop) branch.

    Eager and TorchScript: only when a pad is non-zero. While ``torch.export`` traces (ONNX), always: a zero pad
    and crop are the identity, and a branch on the traced size would bake that size into the graph (the exported
    model would then skip the padding at sizes that need it).
    """
    return is_exporting() or pad_b > 0 or pad_r > 0


def _pad(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    pad_b, pad_r = size[0] - x.shape[1], size[1] - x.shape[2]
    if pad_needed(pad_b, pad_r):
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def window_partition(x: torch.Tensor, window_size: Size2, shift_size: Size2 = 0) -> torch.Tensor:
    """Split a map into non-overlapping windows of contiguous tokens.

    Args:
        x: ``[B, H, W, C]``, any ``H, W >= 1``.
        window_size: ``(wh, ww)`` tokens per window.
        shift_size: cyclic shift ``(sh, sw)`` applied after padding: the map is rolled by ``(-sh, -sw)`` (Swin's
            SW-MSA; 0 for none).

    Returns:
        ``[B * nh * nw, wh, ww, C]`` with ``nh = ceil(H / wh)``, ``nw = ceil(W / ww)``; window ``b * nh * nw + i * nw
        + j`` holds rows ``i * wh ...`` and columns ``j * ww ...`` of the padded (and rolled) map of image ``b``.

    Raises:
        ValueError: ``x`` is not 4-D, or a size outside its range, naming it.
    """
    _check_map(x)
    window_size = _size2(window_size, 'window_size')
    return window_partition_(x, window_size, _shift2(shift_size, window_size))


def padded_size_(size: Tuple[int, int], window_size: Tuple[int, int]) -> Tuple[int, int]:
    """:func:`padded_size` of a validated ``(wh, ww)``; TorchScript compiles it.

    Ceil division as ``(size + w - 1) // w``, not ``-(-size // w)``: for a symbolic size the exported ONNX graph
    divides by ``Div``, which truncates a negative quotient instead of flooring it.
    """
    wh, ww = window_size
    return (size[0] + wh - 1) // wh * wh, (size[1] + ww - 1) // ww * ww


def window_partition_(x: torch.Tensor, window_size: Tuple[int, int], shift: Tuple[int, int]) -> torch.Tensor:
    """:func:`window_partition` without the argument checks (sizes already validated, e.g. by a layer's
    constructor); TorchScript compiles it."""
    B, H, W, C = x.shape
    Hp, Wp = padded_size_((H, W), window_size)
    x = _pad(x, (Hp, Wp))
    if shift[0] != 0 or shift[1] != 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    wh, ww = window_size
    x = x.view(B, Hp // wh, wh, Wp // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


def window_reverse(
        windows: torch.Tensor,
        window_size: Size2,
        size: Tuple[int, int],
        shift_size: Size2 = 0,
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: merge the windows, undo the shift, crop to ``size``.

    Args:
        windows: ``[B * nh * nw, wh, ww, C]`` as :func:`window_partition` returns them.
        window_size: ``(wh, ww)`` used to partition.
        size: ``(H, W)`` of the map before padding.
        shift_size: the shift used to partition.

    Returns:
        ``[B, H, W, C]``.

    Raises:
        ValueError: the windows do not tile a ``size`` map, or a size outside its range, naming it.
    """
    window_size = _size2(window_size, 'window_size')
    return window_reverse_(windows, window_size, _size2(size, 'size'), _shift2(shift_size, window_size))


def window_reverse_(
        windows: torch.Tensor, window_size: Tuple[int, int], size: Tuple[int, int], shift: Tuple[int, int],
) -> torch.Tensor:
    """:func:`window_reverse` with validated sizes (the windows' shape is still checked); TorchScript compiles it."""
    H, W = size
    Hp, Wp = padded_size_((H, W), window_size)
    wh, ww = window_size
    n = (Hp // wh) * (Wp // ww)
    if windows.dim() != 4 or windows.shape[1] != wh or windows.shape[2] != ww or windows.shape[0] % n:
        raise ValueError(
            f'windows must have shape [B * {n}, {wh}, {ww}, C] for a {H}x{W} map, got {shape_str(windows)}')
    C = windows.shape[-1]
    x = windows.view(-1, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, Hp, Wp, C)
    if shift[0] != 0 or shift[1] != 0:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    if pad_needed(Hp - H, Wp - W):
        x = x[:, :H, :W]
    return x.contiguous()


def window_attn_mask(
        size: Tuple[int, int],
        window_size: Size2,
        shift_size: Size2,
        device=None,
        dtype: torch.dtype = torch.float32,
) -> Optional[torch.Tensor]:
    """Swin's additive attention mask of shifted windows: 0 between tokens of one region, -100 across regions.

    After the roll, a window at the bottom/right edge holds tokens from up to four regions that are not neighbours
    in the image; the mask keeps attention within each region. The regions are those of Swin's ``img_mask``: per
    axis ``[0, Hp - wh)``, ``[Hp - wh, Hp - sh)``, ``[Hp - sh, Hp)`` of the padded map.

    Args:
        size: ``(H, W)`` of the map before padding.
        window_size: ``(wh, ww)``.
        shift_size: ``(sh, sw)`` passed to :func:`window_partition`.
        device: device of the mask.
        dtype: dtype of the mask.

    Returns:
        ``[nh * nw, wh * ww, wh * ww]`` (query token, key token) in the window order of :func:`window_partition`, or
        None when the shift is 0 on both axes. Add it to the logits of the ``b``-th image's windows broadcast over
        the batch (e.g. ``logits.view(B, nW, heads, N, N) + mask[:, None]``).

    Raises:
        ValueError: a size outside its range, naming it.
    """
    window_size = _size2(window_size, 'window_size')
    shift = _shift2(shift_size, window_size)
    if not any(shift):
        return None
    Hp, Wp = padded_size(_size2(size, 'size'), window_size)
    img_mask = torch.zeros((1, Hp, Wp, 1), device=device, dtype=dtype)
    cnt = 0
    for h in ((0, Hp - window_size[0]), (Hp - window_size[0], Hp - shift[0]), (Hp - shift[0], Hp)):
        for w in ((0, Wp - window_size[1]), (Wp - window_size[1], Wp - shift[1]), (Wp - shift[1], Wp)):
            img_mask[:, h[0]:h[1], w[0]:w[1], :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, window_size).flatten(1)  # [nW, wh * ww]
    mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.).masked_fill(mask == 0, 0.)


def grid_partition(x: torch.Tensor, grid_size: Size2) -> torch.Tensor:
    """Split a map into ``gh x gw`` windows of tokens strided over the whole map (MaxViT's grid attention).

    Args:
        x: ``[B, H, W, C]``, any ``H, W >= 1``.
        grid_size: ``(gh, gw)`` tokens per window.

    Returns:
        ``[B * (Hp / gh) * (Wp / gw), gh, gw, C]`` with ``(Hp, Wp)`` the padded size: window ``(b, i, j)`` holds
        the tokens at rows ``i + a * Hp / gh`` and columns ``j + c * Wp / gw``, ``a < gh``, ``c < gw``.

    Raises:
        ValueError: ``x`` is not 4-D or ``grid_size`` below 1, naming it.
    """
    _check_map(x)
    return grid_partition_(x, _size2(grid_size, 'grid_size'))


def grid_partition_(x: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
    """:func:`grid_partition` without the argument checks; TorchScript compiles it."""
    B, H, W, C = x.shape
    Hp, Wp = padded_size_((H, W), grid_size)
    x = _pad(x, (Hp, Wp))
    gh, gw = grid_size
    x = x.view(B, gh, Hp // gh, gw, Wp // gw, C)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, gh, gw, C)


def grid_reverse(windows: torch.Tensor, grid_size: Size2, size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: scatter the windows back and crop to ``size``.

    Args:
        windows: ``[B * (Hp / gh) * (Wp / gw), gh, gw, C]``.
        grid_size: ``(gh, gw)`` used to partition.
        size: ``(H, W)`` of the map before padding.

    Returns:
        ``[B, H, W, C]``.

    Raises:
        ValueError: the windows do not tile a ``size`` map, or a size outside its range, naming it.
    """
    return grid_reverse_(windows, _size2(grid_size, 'grid_size'), _size2(size, 'size'))


def grid_reverse_(windows: torch.Tensor, grid_size: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """:func:`grid_reverse` with validated sizes (the windows' shape is still checked); TorchScript compiles it."""
    H, W = size
    Hp, Wp = padded_size_((H, W), grid_size)
    gh, gw = grid_size
    n = (Hp // gh) * (Wp // gw)
    if windows.dim() != 4 or windows.shape[1] != gh or windows.shape[2] != gw or windows.shape[0] % n:
        raise ValueError(
            f'windows must have shape [B * {n}, {gh}, {gw}, C] for a {H}x{W} map, got {shape_str(windows)}')
    C = windows.shape[-1]
    x = windows.view(-1, Hp // gh, Wp // gw, gh, gw, C).permute(0, 3, 1, 4, 2, 5).reshape(-1, Hp, Wp, C)
    if pad_needed(Hp - H, Wp - W):
        x = x[:, :H, :W]
    return x.contiguous()
