"""ConvFfnCl against timm's pvt_v2 MlpWithDepthwiseConv and a direct computation."""
import pytest
import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from zoo.layers import ConvFfnCl, PreNormBlockCl


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize('extra_relu', [False, True], ids=['pvt-v2', 'pvt-v2-linear'])
def test_equals_timm_mlp_with_depthwise_conv(extra_relu):
    ref = _perturb(MlpWithDepthwiseConv(16, 40, extra_relu=extra_relu)).eval()
    ffn = ConvFfnCl(16, 40, extra_relu=extra_relu).eval()
    ffn.load_state_dict(ref.state_dict(), strict=True)  # fc1, dwconv, fc2
    x = torch.randn(2, 7, 9, 16)
    torch.testing.assert_close(ffn(x), ref(x.flatten(1, 2), (7, 9)).reshape(2, 7, 9, 16), atol=1e-5, rtol=1e-5)


def test_matches_direct_computation():
    ffn = _perturb(ConvFfnCl(8, 24, out_features=6, kernel_size=5))
    x = torch.randn(2, 5, 4, 8)
    h = F.linear(x, ffn.fc1.weight, ffn.fc1.bias).permute(0, 3, 1, 2)
    h = F.conv2d(h, ffn.dwconv.weight, ffn.dwconv.bias, padding=2, groups=24)
    h = F.gelu(h).permute(0, 2, 3, 1)
    torch.testing.assert_close(ffn(x), F.linear(h, ffn.fc2.weight, ffn.fc2.bias))
    assert ffn.dwconv.weight.shape == (24, 1, 5, 5)


def test_as_the_mlp_of_a_block():
    block = PreNormBlockCl(8, attn_layer=None, mlp_layer=ConvFfnCl, mlp_ratio=4.)
    assert block.mlp.fc1.out_features == 32
    assert block(torch.randn(1, 3, 5, 8)).shape == (1, 3, 5, 8)


@pytest.mark.parametrize(('kwargs', 'match'), [
    (dict(in_features=0), 'in_features'),
    (dict(in_features=8, drop=1.), 'drop'),
    (dict(in_features=8, kernel_size=2), 'kernel_size'),
    (dict(in_features=8, norm_layer=torch.nn.LayerNorm), 'norm_layer'),
])
def test_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvFfnCl(**kwargs)
    with pytest.raises(ValueError, match='x must'):
        ConvFfnCl(8)(torch.randn(2, 10, 8))
