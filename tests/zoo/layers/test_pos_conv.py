"""Depthwise positional convs (LePE) and the CPE residual, NCHW and channels-last."""
import pytest
import torch
import torch.nn.functional as F

from zoo.layers import Cpe2d, CpeCl, DwConv2d, DwConvCl


def test_depthwise_conv_layouts_agree_with_f_conv2d():
    conv = DwConv2d(6, 5)
    x = torch.randn(2, 6, 7, 9)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=2, groups=6)
    torch.testing.assert_close(conv(x), expected)
    cl = DwConvCl(6, 5)
    cl.load_state_dict(conv.state_dict())
    torch.testing.assert_close(cl(x.permute(0, 2, 3, 1)), expected.permute(0, 2, 3, 1))
    assert [n for n, _ in conv.named_parameters()] == ['weight', 'bias'] and conv.weight.shape == (6, 1, 5, 5)


def test_cpe_adds_the_conv_as_residual():
    cpe = Cpe2d(4, 3)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(cpe(x), x + F.conv2d(x, cpe.weight, cpe.bias, padding=1, groups=4))
    cpe_cl = CpeCl(4, 3)
    cpe_cl.load_state_dict(cpe.state_dict())
    torch.testing.assert_close(cpe_cl(x.permute(0, 2, 3, 1)), cpe(x).permute(0, 2, 3, 1))


def test_no_bias_and_meta():
    assert DwConv2d(4, 3, bias=False).bias is None
    assert DwConvCl(4, 3, device='meta').weight.is_meta


@pytest.mark.parametrize(('kwargs', 'match'), [
    (dict(dim=0), 'dim'), (dict(dim=4, kernel_size=4), 'kernel_size'), (dict(dim=4, kernel_size=0), 'kernel_size'),
])
def test_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cpe2d(**kwargs)
