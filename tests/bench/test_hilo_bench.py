"""bench.hilo runs end to end on tiny maps; its window-attention block is Swin's W-MSA; bench.official_litv2 names."""
import pytest
import torch
import torch.nn.functional as F

from bench import hilo, official_litv2


def test_runs_and_prints_a_row_per_map(capsys):
    hilo.main(['--sides', '3', '--repeats', '1', '--budget', '0.1'])
    out = capsys.readouterr().out
    assert '| 3x3 (48) |' in out and 'sra / hilo fwd+bwd' in out


def test_window_block_is_per_window_attention_with_the_bias():
    torch.manual_seed(0)
    m = hilo.WindowAttentionCl(16, num_heads=2, window_size=2).double()
    with torch.no_grad():
        m.rel_pos.relative_position_bias_table.normal_()
    x = torch.randn(1, 4, 2, 16, dtype=torch.float64)
    out = m(x)
    for i in (0, 2):  # the two 2x2 windows, attended separately
        w = x[:, i:i + 2].reshape(1, 4, 16)
        q, k, v = m.qkv(w).view(1, 4, 3, 2, 8).permute(2, 0, 3, 1, 4)
        ref = F.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5 + m.rel_pos.get_bias(), -1) @ v
        ref = m.proj(ref.transpose(1, 2).reshape(1, 2, 2, 16))
        torch.testing.assert_close(out[:, i:i + 2], ref)


def test_official_litv2_names():
    assert set(official_litv2.NAMES) == {'litv2_small', 'litv2_medium', 'litv2_base'}
    with pytest.raises(ValueError, match='litv2_small'):
        official_litv2.build('litv2_tiny')
