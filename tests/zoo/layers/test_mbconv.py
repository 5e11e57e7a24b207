"""MbConvBlock2d: timm's MaxViT MBConv (TF config) with the same weights, and any map size."""
import pytest
import torch
from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock

from zoo.layers import MbConvBlock2d

TF_CONV = MaxxVitConvCfg(norm_eps=1e-3, act_layer='gelu_tanh', padding='same')


def _randomize(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return module


@pytest.mark.parametrize('in_chs, out_chs, stride', [(32, 32, 1), (32, 32, 2), (16, 32, 2)])
def test_equals_timm_mbconv(in_chs, out_chs, stride):
    ours = _randomize(MbConvBlock2d(in_chs, out_chs, stride=stride)).eval()
    ref = MbConvBlock(in_chs, out_chs, stride=stride, cfg=TF_CONV).eval()
    assert [k for k in ref.state_dict()] == [k for k in ours.state_dict()]
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, in_chs, 14, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size', [(13, 7), (1, 1), (6, 9)], ids=str)
def test_any_size_halves_with_ceil(size):
    block = MbConvBlock2d(8, 16, stride=2, expand_ratio=2.).eval()
    out = block(torch.randn(1, 8, *size))
    assert out.shape == (1, 16, -(-size[0] // 2), -(-size[1] // 2))
    # the 'same' shortcut pool averages the last odd row over its real values only
    x = torch.ones(1, 8, *size)
    assert torch.allclose(block.shortcut.pool(x), torch.ones(1, 8, -(-size[0] // 2), -(-size[1] // 2)))


def test_bad_arguments():
    with pytest.raises(ValueError, match='stride'):
        MbConvBlock2d(8, 8, stride=3)
    with pytest.raises(ValueError, match='in_chs must equal out_chs'):
        MbConvBlock2d(8, 16, stride=1)
    with pytest.raises(ValueError, match='kernel_size'):
        MbConvBlock2d(8, 8, kernel_size=4)
    with pytest.raises(ValueError, match=r'\[B, 8, H, W\]'):
        MbConvBlock2d(8, 8)(torch.randn(1, 4, 8, 8))
