"""InLine attention against a direct implementation of the official math (LeapLabTHU/InLine ``models/inline_*.py``).

The reference below is written from the official ``InLineAttention.forward`` of the three hosts: ``k^T v`` with both
factors scaled by ``sqrt(scale / n)``, the ``(1 - q mean(k)^T scale) mean(v)`` term, the ``residual`` convs on the
token mean reshaped to ``[b * c, 1, 3, 3]`` and applied by one grouped NCHW conv to V (patch tokens only for DeiT),
then ``proj``. It runs on the layer's own parameters; ``mutate`` plants one deviation so that the comparison is shown
to notice it.
"""
import pytest
import torch
import torch.nn.functional as F

from zoo.layers import InLineAttention, dwconv3x3_per_sample, inline_attention_core


def _reference(mod, x, size=None, mutate=None):
    """Official forward on ``mod``'s parameters; ``x`` is ``[B, H, W, C]`` or ``[B, P + H * W, C]`` tokens."""
    if x.dim() == 4:
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
    else:
        H, W = size
    b, n, c = x.shape
    P = n - H * W
    heads, hd = mod.num_heads, c // mod.num_heads
    scale = hd ** -0.5 * (2. if mutate == 'scale' else 1.)
    if mod.qkv_layout == 'qkv':
        q, k, v = F.linear(x, mod.qkv.weight, mod.qkv.bias).reshape(b, n, 3, c).permute(2, 0, 1, 3)
    else:
        q = F.linear(x, mod.q.weight, mod.q.bias)
        k, v = F.linear(x, mod.kv.weight, mod.kv.bias).reshape(b, n, 2, c).permute(2, 0, 1, 3)
    phi = {'identity': lambda t: t, 'relu': F.relu, 'leakyrelu': F.leaky_relu,
           'exp': lambda t: (t * 0.2).exp()}[mod.kernel_func]
    q, k = phi(q), phi(k)
    q, k, v = (t.reshape(b, n, heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    src = x if mutate != 'residual_from_v' else v.transpose(1, 2).reshape(b, n, c)
    res_weight = mod.residual(src.mean(dim=1).unsqueeze(dim=-1)).reshape(b * c, 1, 3, 3)
    if mutate == 'kernel_transposed':
        res_weight = res_weight.transpose(-1, -2)
    kv = (k.transpose(-2, -1) * (scale / n) ** 0.5) @ (v * (scale / n) ** 0.5)
    if mutate == 'no_injective':
        out = q @ kv
    else:
        out = q @ kv + (1 - q @ k.mean(dim=2, keepdim=True).transpose(-2, -1) * scale) * v.mean(dim=2, keepdim=True)
    out = out.transpose(1, 2).reshape(b, n, c)
    v_ = v[:, :, P:, :].transpose(1, 2).reshape(b, H, W, c).permute(0, 3, 1, 2).reshape(1, b * c, H, W)
    residual = F.conv2d(v_, res_weight, None, padding=(1, 1), groups=b * c).reshape(b, c, H * W).permute(0, 2, 1)
    if mutate != 'no_residual':
        out = torch.cat([out[:, :P], out[:, P:] + residual], dim=1)
    out = F.linear(out, mod.proj.weight, mod.proj.bias)
    return out.reshape(b, H, W, c) if P == 0 and size is None else out


def _layer(dim=32, heads=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    mod = InLineAttention(dim, heads, **kwargs).double().eval()
    with torch.no_grad():
        for p in mod.parameters():  # non-trivial values everywhere (biases too)
            p.normal_(0, 0.4 if p.dim() > 1 else 0.2)
    return mod


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize('layout', ['qkv', 'q_kv'])
@pytest.mark.parametrize('kernel_func', ['identity', 'relu', 'leakyrelu', 'exp'])
@pytest.mark.parametrize('size', [(7, 7), (5, 9), (1, 1)])
def test_matches_official_math_maps(layout, kernel_func, size):
    mod = _layer(qkv_layout=layout, kernel_func=kernel_func)
    x = torch.randn(2, *size, 32, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(mod(x), _reference(mod, x)) < 1e-12


@pytest.mark.parametrize('size', [(4, 4), (3, 6)])
def test_matches_official_math_class_token(size):
    """InLine-DeiT: the class token is attended with the patches (n counts it) but gets no local residual."""
    mod = _layer(dim=24, heads=3, num_prefix_tokens=1)
    x = torch.randn(2, 1 + size[0] * size[1], 24, dtype=torch.float64)
    with torch.no_grad():
        out = mod(x, size=size)
        assert out.shape == x.shape
        assert _rel(out, _reference(mod, x, size=size)) < 1e-12


@pytest.mark.parametrize('mutate', ['scale', 'no_injective', 'no_residual', 'residual_from_v', 'kernel_transposed'])
def test_reference_notices_planted_bugs(mutate):
    mod = _layer()
    x = torch.randn(2, 6, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(mod(x), _reference(mod, x, mutate=mutate)) > 1e-3


def test_attention_weights_sum_to_one():
    """The injective normalisation: constant values come back unchanged from the attention core."""
    q, k = torch.randn(2, 50, 16, dtype=torch.float64), torch.randn(2, 50, 16, dtype=torch.float64)
    v = torch.full((2, 50, 16), 3.5, dtype=torch.float64)
    torch.testing.assert_close(inline_attention_core(q, k, v, 4), v)


def test_dwconv_per_sample_equals_conv_of_each_sample():
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64)
    w = torch.randn(3, 6, 3, 3, dtype=torch.float64)
    out = dwconv3x3_per_sample(x, w)
    for b in range(3):
        ref = F.conv2d(x[b:b + 1].permute(0, 3, 1, 2), w[b].unsqueeze(1), padding=1, groups=6)
        torch.testing.assert_close(out[b:b + 1], ref.permute(0, 2, 3, 1))


def test_dwconv_per_sample_bias():
    """The bias (the layer passes mean(V) through it) is added per sample and channel."""
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64)
    w = torch.randn(3, 6, 3, 3, dtype=torch.float64)
    b = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(dwconv3x3_per_sample(x, w, b), dwconv3x3_per_sample(x, w) + b[:, None, None, :])


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_scripted_layer_equals_eager():
    """TorchScript (the autocast switch is Python-only; the math is the same code)."""
    for kwargs, x, size in ((dict(), torch.randn(2, 4, 5, 32, dtype=torch.float64), None),
                            (dict(qkv_layout='q_kv', kernel_func='exp'), torch.randn(2, 3, 3, 32, dtype=torch.float64),
                             None),
                            (dict(num_prefix_tokens=1), torch.randn(2, 21, 32, dtype=torch.float64), (4, 5))):
        mod = _layer(**kwargs)
        scripted = torch.jit.script(mod)
        with torch.no_grad():
            args = (x,) if size is None else (x, size)
            torch.testing.assert_close(scripted(*args), mod(*args), rtol=1e-12, atol=1e-12)


def test_gradients_match_reference():
    mod = _layer(dim=16, heads=2)
    x = torch.randn(2, 4, 5, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 5, 16, dtype=torch.float64)
    (mod(x) * g).sum().backward()
    ours = [x.grad.clone()] + [p.grad.clone() for p in mod.parameters()]
    x.grad = None
    mod.zero_grad()
    (_reference(mod, x) * g).sum().backward()
    ref = [x.grad] + [p.grad for p in mod.parameters()]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------- 16-bit, many tokens
def _big_case(scale=1.):
    """InLine-PVT stage 1 at a 1024 x 1024 input: a 256 x 256 map (65,536 tokens), 64 channels, 2 heads."""
    torch.manual_seed(0)
    mod = InLineAttention(64, 2, qkv_layout='q_kv').eval()
    x = torch.randn(1, 256, 256, 64) * scale
    return mod, x


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_16bit_at_1024px_stage1(dtype):
    """Autocast at 65,536 tokens: finite and close to the float64 computation (measured: 5.3e-3 bf16 with the
    bfloat16 core, 4.8e-3 with a float32 one; 6e-4 fp16); at input scale 30 a float16 K^T V (a sum of 65,536
    products of size ~1e3) would overflow."""
    mod, x = _big_case(30.)
    with torch.no_grad():
        ref = mod.double()(x.double())
        mod.float()
        with torch.autocast('cpu', dtype=dtype):
            out = mod(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_16bit_module_at_1024px_stage1(dtype):
    """A module cast to 16 bits (no autocast): float16 still sums in float32, bfloat16 in bfloat16 products."""
    mod, x = _big_case(30.)
    with torch.no_grad():
        ref = mod.double()(x.double())
        out = mod.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _rel(out, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_core_in_16bit_would_overflow():
    """The float32 core matters: the same K^T V formed in float16 overflows at this size and scale."""
    torch.manual_seed(0)
    k = (torch.randn(1, 65536, 32) * 30).half()
    v = (torch.randn(1, 65536, 32) * 30).half() + 60
    assert not torch.isfinite(k.transpose(1, 2) @ v).all()
    out = inline_attention_core(k, k, v, 2)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


# -------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(('kwargs', 'match'), [
    (dict(num_heads=5), 'num_heads'),
    (dict(qkv_layout='kqv'), 'qkv_layout'),
    (dict(kernel_func='softmax'), 'kernel_func'),
    (dict(num_prefix_tokens=-1), 'num_prefix_tokens'),
    (dict(proj_drop=1.), 'proj_drop'),
    (dict(attn_drop=-0.1), 'attn_drop'),
])
def test_bad_arguments(kwargs, match):
    args = dict(dim=32, num_heads=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        InLineAttention(**args)


def test_bad_inputs():
    mod = InLineAttention(32, 4)
    with pytest.raises(ValueError, match=r'\[B, H, W, 32\]'):
        mod(torch.randn(2, 5, 5, 16))
    with pytest.raises(ValueError, match=r'\[B, H, W, 32\]'):
        mod(torch.randn(2, 25, 32))
    cls = InLineAttention(32, 4, num_prefix_tokens=1)
    with pytest.raises(ValueError, match='size'):
        cls(torch.randn(2, 17, 32))
    with pytest.raises(ValueError, match='expected 1 \\+ 4 \\* 5'):
        cls(torch.randn(2, 17, 32), size=(4, 5))
    with pytest.raises(ValueError, match='num_heads'):
        inline_attention_core(torch.randn(1, 4, 10), torch.randn(1, 4, 10), torch.randn(1, 4, 10), 3)
    with pytest.raises(ValueError, match='q, k and v'):
        inline_attention_core(torch.randn(1, 4, 8), torch.randn(1, 5, 8), torch.randn(1, 4, 8), 2)
    with pytest.raises(ValueError, match='weight'):
        dwconv3x3_per_sample(torch.randn(2, 4, 4, 8), torch.randn(2, 8, 9))
    with pytest.raises(ValueError, match='bias'):
        dwconv3x3_per_sample(torch.randn(2, 4, 4, 8), torch.randn(2, 8, 3, 3), torch.randn(8))
    # empty inputs, integer and other-dtype tokens: named, not a division by zero or a deep dtype error
    for x in (torch.randn(0, 5, 5, 32), torch.randn(2, 0, 5, 32)):
        with pytest.raises(ValueError, match='x must be non-empty'):
            mod(x)
    with pytest.raises(ValueError, match='q must be non-empty'):
        inline_attention_core(*(torch.randn(1, 0, 8),) * 3, 2)
    with pytest.raises(TypeError, match='floating-point.*int64'):
        mod(torch.ones(2, 5, 5, 32, dtype=torch.long))
    with pytest.raises(TypeError, match=r'dtype of the parameters \(torch.float32.*float64'):
        mod(torch.randn(2, 5, 5, 32, dtype=torch.float64))
    with torch.autocast('cpu', torch.bfloat16):  # autocast casts 16-bit tokens for float32 parameters
        assert mod(torch.randn(2, 5, 5, 32, dtype=torch.float16)).shape == (2, 5, 5, 32)
