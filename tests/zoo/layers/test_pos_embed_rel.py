"""RelPosBias: timm's RelPosBias on the same table, Swin's index formula, and NAT's opposite convention."""
import pytest
import torch
from timm.layers import RelPosBias as TimmRelPosBias

from zoo.layers import RelPosBias, RpbAttention2d, rel_pos_table_from_nat


@pytest.mark.parametrize('window', [7, (3, 4)])
def test_equals_timm_rel_pos_bias_on_the_same_table(window):
    window2 = (window, window) if isinstance(window, int) else window
    ours = RelPosBias(window, num_heads=3)
    ref = TimmRelPosBias(window2, num_heads=3)
    ref.relative_position_bias_table.data.copy_(ours.relative_position_bias_table)
    torch.testing.assert_close(ours.get_bias(), ref.get_bias(), rtol=0, atol=0)
    n = window2[0] * window2[1]
    attn = torch.randn(2, 3, n, n)
    torch.testing.assert_close(ours(attn), ref(attn), rtol=0, atol=0)
    assert [n for n, _ in ours.named_parameters()] == ['relative_position_bias_table']
    assert ours.relative_position_bias_table.shape == ((2 * window2[0] - 1) * (2 * window2[1] - 1), 3)


def test_swin_index_is_query_minus_key():
    wh, ww = 3, 4
    layer = RelPosBias((wh, ww), num_heads=2)
    bias = layer.get_bias()[0]
    table = layer.relative_position_bias_table
    for q in range(wh * ww):
        for k in range(wh * ww):
            (yq, xq), (yk, xk) = divmod(q, ww), divmod(k, ww)
            row = (yq - yk + wh - 1) * (2 * ww - 1) + (xq - xk + ww - 1)
            torch.testing.assert_close(bias[:, q, k], table[row])


def test_nat_rpb_is_the_flipped_table():
    """NAT's rpb indexes key minus query: flipped both ways it is a Swin table giving every pair the same bias."""
    nat = RpbAttention2d(8, num_heads=2, grid_size=(3, 4))
    swin = RelPosBias((3, 4), num_heads=2)
    with torch.no_grad():
        swin.relative_position_bias_table.copy_(rel_pos_table_from_nat(nat.rpb))
    torch.testing.assert_close(swin.get_bias()[0], nat._bias((3, 4)), rtol=0, atol=0)
    # unflipped, the two conventions disagree (the table is not symmetric)
    with torch.no_grad():
        swin.relative_position_bias_table.copy_(nat.rpb.flatten(1).t())
    assert not torch.allclose(swin.get_bias()[0], nat._bias((3, 4)))


def test_meta_build_then_materialise_and_inference_mode():
    layer = RelPosBias(4, num_heads=2, device='meta')
    assert layer.relative_position_bias_table.is_meta
    layer = layer.to_empty(device='cpu')
    layer.relative_position_bias_table.data.normal_()
    with torch.inference_mode():
        expected = layer.get_bias()
    bias = layer.get_bias()
    bias.sum().backward()
    torch.testing.assert_close(bias.detach(), expected)
    assert layer.relative_position_bias_table.grad is not None


@pytest.mark.parametrize(('call', 'match'), [
    (lambda: RelPosBias(0, 2), 'window_size'),
    (lambda: RelPosBias((3, 4, 5), 2), 'window_size'),
    (lambda: RelPosBias(3, 0), 'num_heads'),
    (lambda: RelPosBias(3, 2)(torch.randn(1, 2, 8, 9)), 'attn'),
    (lambda: rel_pos_table_from_nat(torch.randn(2, 4, 5)), 'rpb'),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
