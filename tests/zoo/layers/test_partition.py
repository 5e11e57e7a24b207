"""Window / grid partitions: round trips with padding, timm's layouts and Swin's shifted-window mask."""
import math

import pytest
import torch
from timm.models import maxxvit, swin_transformer
from timm.models.swin_transformer import SwinTransformerBlock

from zoo.layers import grid_partition, grid_reverse, padded_size, window_attn_mask, window_partition, window_reverse

SIZES = [(7, 7), (9, 13), (1, 1), (5, 20), (14, 21)]


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize(('window', 'shift'), [(3, 0), ((3, 4), 0), (3, 1), ((3, 4), (2, 1))])
def test_window_round_trip_with_padding(size, window, shift):
    x = torch.randn(2, *size, 5)
    windows = window_partition(x, window, shift)
    wh, ww = (window, window) if isinstance(window, int) else window
    n = math.ceil(size[0] / wh) * math.ceil(size[1] / ww)
    assert windows.shape == (2 * n, wh, ww, 5)
    torch.testing.assert_close(window_reverse(windows, window, size, shift), x, rtol=0, atol=0)
    # the padding is zeros: the windows hold the map's values and nothing else
    assert windows.abs().sum() == pytest.approx(x.abs().sum().item(), rel=1e-5)


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('grid', [2, (3, 4), 7])
def test_grid_round_trip_with_padding(size, grid):
    x = torch.randn(2, *size, 3)
    windows = grid_partition(x, grid)
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    Hp, Wp = padded_size(size, grid)
    assert windows.shape == (2 * (Hp // gh) * (Wp // gw), gh, gw, 3)
    torch.testing.assert_close(grid_reverse(windows, grid, size), x, rtol=0, atol=0)


def test_grid_windows_hold_strided_tokens():
    H, W, g = 9, 8, 3
    Hp, Wp = padded_size((H, W), g)
    coords = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij'), -1).float() + 1
    windows = grid_partition(coords[None], g)  # [(Hp/g) * (Wp/g), g, g, 2], padded tokens are (0, 0)
    for i in range(Hp // g):
        for j in range(Wp // g):
            win = windows[i * (Wp // g) + j]
            for a in range(g):
                for c in range(g):
                    r, col = i + a * (Hp // g), j + c * (Wp // g)
                    expected = (r + 1, col + 1) if r < H and col < W else (0, 0)
                    assert tuple(win[a, c].tolist()) == expected


@pytest.mark.parametrize('size', [(6, 6), (12, 18)], ids=['6x6', '12x18'])
def test_layouts_equal_timm_for_divisible_sizes(size):
    x = torch.randn(2, *size, 4)
    torch.testing.assert_close(window_partition(x, (2, 3)), swin_transformer.window_partition(x, (2, 3)))
    torch.testing.assert_close(window_partition(x, 2), maxxvit.window_partition(x, (2, 2)))
    torch.testing.assert_close(grid_partition(x, (2, 3)), maxxvit.grid_partition(x, (2, 3)))
    rolled = torch.roll(x, shifts=(-1, -2), dims=(1, 2))
    torch.testing.assert_close(window_partition(x, (2, 3), (1, 2)), swin_transformer.window_partition(rolled, (2, 3)))


@pytest.mark.parametrize(('size', 'window', 'shift'), [
    pytest.param((14, 14), 7, 3, id='swin-T-stage3-like'),
    pytest.param((56, 56), 7, 3, id='56x56-w7'),
    pytest.param((12, 16), 4, 2, id='12x16-w4'),
])
def test_shifted_mask_equals_timm_swin(size, window, shift):
    block = SwinTransformerBlock(8, input_resolution=size, num_heads=2, window_size=window, shift_size=shift)
    mask = window_attn_mask(size, window, shift)
    assert mask.shape == block.attn_mask.shape
    torch.testing.assert_close(mask, block.attn_mask, rtol=0, atol=0)
    assert window_attn_mask(size, window, 0) is None


@pytest.mark.parametrize(('size', 'window', 'shift'), [
    ((14, 14), 7, 3), ((9, 13), 4, 2), ((17, 10), (5, 4), (2, 1)),
])
def test_shifted_mask_keeps_image_neighbours_only(size, window, shift):
    """Mask 0 exactly for token pairs that lie within one window extent of each other in the padded, unshifted map."""
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    Hp, Wp = padded_size(size, (wh, ww))
    ys, xs = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing='ij')
    coords = torch.stack([ys, xs], -1).float()
    # partition the coordinates of the padded map (already a multiple: no further padding)
    win_coords = window_partition(coords[None], (wh, ww), (sh, sw)).flatten(1, 2)  # [nW, N, 2]
    mask = window_attn_mask(size, (wh, ww), (sh, sw))
    dist = (win_coords[:, :, None] - win_coords[:, None, :]).abs()
    neighbours = (dist[..., 0] < wh) & (dist[..., 1] < ww)
    assert torch.equal(mask == 0, neighbours)
    assert set(mask.unique().tolist()) <= {0., -100.}


@pytest.mark.parametrize(('call', 'match'), [
    (lambda: window_partition(torch.randn(2, 4, 4), 2), 'x must'),
    (lambda: window_partition(torch.randn(1, 4, 4, 2), 0), 'window_size'),
    (lambda: window_partition(torch.randn(1, 4, 4, 2), 2, 2), 'shift_size'),
    (lambda: window_reverse(torch.randn(3, 2, 2, 1), 2, (4, 4)), 'windows must'),
    (lambda: window_attn_mask((4, 4), 2, -1), 'shift_size'),
    (lambda: grid_partition(torch.randn(1, 4, 4, 2), (2, 0)), 'grid_size'),
    (lambda: grid_reverse(torch.randn(4, 2, 3, 1), 2, (4, 4)), 'windows must'),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
