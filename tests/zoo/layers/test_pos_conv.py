"""Depthwise positional convs (LePE) and the CPE residual, NCHW and channels-last."""
import pytest
import torch
import torch.nn.functional as F

from zoo.layers import Cpe2d, CpeCl, DwConv2d, DwConvCl, depthwise_conv2d


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


def _grads(fn, x, weight, bias, grad_out):
    out = fn(x, weight, bias)
    return out, torch.autograd.grad(out, [t for t in (x, weight, bias) if t is not None and t.requires_grad], grad_out)


@pytest.mark.parametrize('kernel', [5, 7, 9, 11])
@pytest.mark.parametrize('channels_last', [False, True])
def test_depthwise_conv2d_cpu_backward_equals_f_conv2d(kernel, channels_last):
    """The wide-kernel CPU backward (input gradient by the flipped kernel, weight gradient from k x 3 column slices,
    the last overlapping for k = 5, 7, 11) equals autograd of ``F.conv2d``; 11 is wider than the 9-row map."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 13, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(6, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 6, 9, 13, dtype=torch.float64)
    out, grads = _grads(depthwise_conv2d, x, weight, bias, grad_out)
    assert type(out.grad_fn).__name__ == '_DepthwiseConv2dCpuBackward'
    ref, grads_ref = _grads(lambda *a: F.conv2d(*a, padding=kernel // 2, groups=6), x, weight, bias, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name, got, expected in zip(('x', 'weight', 'bias'), grads, grads_ref):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)


def test_depthwise_conv2d_float32_partial_grads_and_double_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(8, 1, 5, 5, requires_grad=True)
    grad_out = torch.randn(2, 8, 12, 10)
    # a frozen input and no bias: only the weight gradient
    out, (grad_w,) = _grads(depthwise_conv2d, x, weight, None, grad_out)
    _, (grad_w_ref,) = _grads(lambda *a: F.conv2d(*a, padding=2, groups=8), x, weight, None, grad_out)
    assert type(out.grad_fn).__name__ == '_DepthwiseConv2dCpuBackward'
    torch.testing.assert_close(grad_w, grad_w_ref, rtol=1e-4, atol=1e-4)
    args = [torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True),
            torch.randn(2, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(depthwise_conv2d, args)
    assert torch.autograd.gradgradcheck(depthwise_conv2d, args)


def test_depthwise_conv2d_takes_the_plain_conv_elsewhere():
    """3x3 kernels (oneDNN's backward is fast there), no autograd, and autocast run ``F.conv2d`` itself."""
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    w3, w5 = torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(4, 1, 5, 5, requires_grad=True)
    assert type(depthwise_conv2d(x, w3).grad_fn).__name__ == 'ConvolutionBackward0'
    with torch.no_grad():
        assert depthwise_conv2d(x, w5).grad_fn is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = depthwise_conv2d(x, w5)
        expected = F.conv2d(x, w5, padding=2, groups=4)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ == 'ConvolutionBackward0'
    torch.testing.assert_close(out, expected)


def test_cpu_backward_under_torch_compile():
    """``torch.compile`` (AOT autograd, one graph) traces the wide-kernel CPU backward too (its weight gradient from
    k x 3 column slices), with autograd's gradients of ``F.conv2d``."""
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd

    backward_graphs = []

    def keep_backward(gm, _):
        backward_graphs.append(gm)
        return gm

    torch._dynamo.reset()
    torch.manual_seed(0)
    lepe = DwConv2d(6, 5).double()
    x = torch.randn(2, 6, 9, 13, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 6, 9, 13, dtype=torch.float64)
    backend = aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=keep_backward)
    compiled = torch.compile(lepe, fullgraph=True, backend=backend)
    out, grads = _grads(lambda x, w, b: compiled(x), x.requires_grad_(), lepe.weight, lepe.bias, grad_out)
    widths = {node.args[2].meta['val'].shape[-1] for node in backward_graphs[0].graph.nodes
              if node.target == torch.ops.aten.convolution_backward.default}
    assert widths == {3}  # the column slices, not oneDNN's 5x5 weight gradient
    _, expected = _grads(lambda *a: F.conv2d(*a, padding=2, groups=6), x, lepe.weight, lepe.bias, grad_out)
    for name, got, want in zip(('x', 'weight', 'bias'), grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


def test_modules_use_the_cpu_backward():
    lepe = DwConv2d(4, 5)
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    assert type(lepe(x).grad_fn).__name__ == '_DepthwiseConv2dCpuBackward'
    lepe_cl = DwConvCl(4, 7)
    assert type(lepe_cl(x.permute(0, 2, 3, 1)).grad_fn.next_functions[0][0]).__name__ == '_DepthwiseConv2dCpuBackward'


def test_per_sample_gradients_through_torch_func():
    """``torch.func.vmap(grad(...))`` (per-sample gradients) runs through the custom backward and equals it on the
    plain conv."""
    from torch.func import functional_call, grad, vmap
    torch.manual_seed(0)
    lepe = DwConv2d(4, 5)
    x = torch.randn(3, 1, 4, 6, 7)
    params = {k: v.detach() for k, v in lepe.named_parameters()}

    def loss(p, xi):
        return functional_call(lepe, p, (xi,)).square().sum()

    def loss_ref(p, xi):
        return F.conv2d(xi, p['weight'], p['bias'], padding=2, groups=4).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, x)
    expected = vmap(grad(loss_ref), in_dims=(None, 0))(params, x)
    for name in params:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(('x_shape', 'w_shape', 'match'), [
    ((1, 4, 6, 6), (4, 1, 4, 4), 'odd k'),  # even kernel: the padding would shift the map
    ((1, 4, 6, 6), (4, 1, 5, 3), 'odd k'),  # not square
    ((1, 4, 6, 6), (4, 2, 5, 5), r'\[C, 1, k, k\]'),  # not depthwise
    ((1, 3, 6, 6), (4, 1, 5, 5), r'x must have shape \[B, 4, H, W\]'),
    ((4, 6, 6), (4, 1, 5, 5), r'x must have shape \[B, 4, H, W\]'),
])
def test_depthwise_conv2d_bad_shapes_name_the_argument(x_shape, w_shape, match):
    with pytest.raises(ValueError, match=match):
        depthwise_conv2d(torch.randn(x_shape), torch.randn(w_shape, requires_grad=True))
