"""RALA / RAVLT softmax attention against a direct implementation of the official math (qhfan/RALA ``RALA.py``).

The reference below is written from the official code: ``GateLinearAttentionNoSilu`` / ``VanillaSelfAttention`` with
``theta_shift`` / ``rotate_every_two`` and the ``RoPE`` tables, keeping the official ``k * eff * N`` and ``N ** -0.5``
factors that the layer cancels. It runs on the layer's own parameters.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import RalaAttention2d, Rope2d, apply_rope_2d, rala_core


def _official_rope(head_dim, h, w, dtype=torch.float64):
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4))
    angle = angle.unsqueeze(-1).repeat(1, 2).flatten().to(dtype)
    ih, iw = torch.arange(h).to(angle), torch.arange(w).to(angle)
    sin = torch.cat([torch.sin(ih[:, None] * angle).unsqueeze(1).repeat(1, w, 1),
                     torch.sin(iw[:, None] * angle).unsqueeze(0).repeat(h, 1, 1)], -1).flatten(0, 1)
    cos = torch.cat([torch.cos(ih[:, None] * angle).unsqueeze(1).repeat(1, w, 1),
                     torch.cos(iw[:, None] * angle).unsqueeze(0).repeat(h, 1, 1)], -1).flatten(0, 1)
    return sin, cos


def _theta_shift(x, sin, cos):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return x * cos + torch.stack([-x2, x1], dim=-1).flatten(-2) * sin


def _reference(mod, x, mutate=None):
    """The official forward on ``mod``'s parameters; ``mutate`` plants one deviation from the official math."""
    B, C, H, W = x.shape
    n, d, N = mod.num_heads, mod.head_dim, H * W
    sin, cos = _official_rope(d, H, W, x.dtype)
    qkvo = F.conv2d(x, mod.qkvo.weight, mod.qkvo.bias)
    qkv, o = qkvo[:, :3 * C], qkvo[:, 3 * C:]
    lepe = F.conv2d(qkv[:, 2 * C:], mod.lepe.weight, mod.lepe.bias, padding=mod.lepe.padding, groups=C)
    # rearrange 'b (m n d) h w -> m b n (h w) d'
    q, k, v = qkv.reshape(B, 3, n, d, N).permute(1, 0, 2, 4, 3)
    scale = d ** -0.5 * (2. if mutate == 'scale' else 1.)
    if mod.mode == 'rala':
        q, k = F.elu(q) + 1., F.elu(k) + 1.
        eff = scale * q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2)
        eff = torch.softmax(eff, dim=-1).transpose(-1, -2)
        if mutate != 'no_reweight':
            k = k * eff * N
        q_rope, k_rope = _theta_shift(q, sin, cos), _theta_shift(k, sin, cos)
        if mutate == 'rope_everywhere':
            q, k = q_rope, k_rope
        z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
        kv = (k_rope.transpose(-2, -1) * N ** -0.5) @ (v * N ** -0.5)
        res = q_rope @ kv * z
    else:
        if mutate != 'no_rope':
            q, k = _theta_shift(q, sin, cos), _theta_shift(k, sin, cos)
        res = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1) @ v
    res = res.permute(0, 1, 3, 2).reshape(B, C, H, W) + lepe
    if mutate == 'no_gate':
        o = torch.ones_like(o)
    return F.conv2d(res * o, mod.proj.weight, mod.proj.bias)


def _layer(dim, heads, mode, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    mod = RalaAttention2d(dim, heads, mode=mode).to(dtype)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0, 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1)
    return mod.eval()


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_rope_tables_equal_official():
    rope = Rope2d(32).double()
    torch.testing.assert_close(rope.angle, 1.0 / (10000 ** torch.linspace(0, 1, 8)).double().repeat_interleave(2))
    sin, cos = _official_rope(32, 5, 7)
    x = torch.randn(2, 3, 35, 32, dtype=torch.float64)
    torch.testing.assert_close(apply_rope_2d(x, rope((5, 7))), _theta_shift(x, sin, cos))
    assert 'angle' in rope.state_dict()  # persistent: official checkpoints carry it
    assert len(rope((5, 7))) == 3  # paired angles: the complex product per pair, same values as the real form
    torch.testing.assert_close(apply_rope_2d(x, rope((5, 7))[:2]), _theta_shift(x, sin, cos))


def test_rope_with_loaded_unpaired_angles_stays_exact():
    """A checkpoint whose angle buffer does not pair up (not one the official code computes) still rotates every
    channel by its own angle, as the official ``theta_shift`` does."""
    rope = Rope2d(16).double()
    angle = torch.rand(8, dtype=torch.float64)
    rope.load_state_dict({'angle': angle})
    assert not rope.paired and len(rope((3, 4))) == 2
    ih, iw = torch.arange(3.).double(), torch.arange(4.).double()
    ang = torch.cat([(ih[:, None] * angle).unsqueeze(1).expand(3, 4, 8), (iw[:, None] * angle).unsqueeze(0).expand(
        3, 4, 8)], -1).flatten(0, 1)
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(apply_rope_2d(x, rope((3, 4))), _theta_shift(x, torch.sin(ang), torch.cos(ang)))
    rope.load_state_dict({'angle': Rope2d(16).double().angle})
    assert rope.paired


@pytest.mark.parametrize('mode', ['rala', 'softmax'])
@pytest.mark.parametrize('dim, heads, size', [(32, 1, (7, 9)), (48, 3, (5, 4)), (64, 2, (1, 1))])
def test_matches_official_math(mode, dim, heads, size):
    mod = _layer(dim, heads, mode)
    rope = Rope2d(dim // heads).double()
    x = torch.randn(2, dim, *size, dtype=torch.float64)
    with torch.no_grad():
        ref = _reference(mod, x)
        out = mod(x, rope(size))
        assert _rel(out, ref) < 1e-12
        if mode == 'softmax':
            mod.fused_attn = not mod.fused_attn  # the explicit path (what fvcore counts) and SDPA agree
            assert _rel(mod(x, rope(size)), ref) < 1e-12


@pytest.mark.parametrize('mode, mutation', [
    ('rala', 'scale'), ('rala', 'no_reweight'), ('rala', 'rope_everywhere'), ('rala', 'no_gate'),
    ('softmax', 'scale'), ('softmax', 'no_rope')])
def test_planted_deviations_are_detected(mode, mutation):
    """Each plausible misreading of the official math moves the output far beyond the tolerance above."""
    mod = _layer(32, 2, mode)
    x = torch.randn(1, 32, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(mod(x, Rope2d(16).double()((6, 8))), _reference(mod, x, mutate=mutation)) > 1e-3


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_16bit_autocast_at_1024px_stage1_tokens(dtype):
    """256x256 tokens (a 1024x1024-px input at stride 4; one head of 16 channels keeps the CPU test short): no
    overflow, close to float64."""
    mod = _layer(16, 1, 'rala', dtype=torch.float32, seed=1)
    rope = Rope2d(16)
    x = torch.randn(1, 16, 256, 256)
    with torch.no_grad():
        ref = _reference(mod.double(), x.double())
        mod.float()
        with torch.autocast('cpu', dtype=dtype):
            out = mod(x, rope((256, 256)))
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert _rel(out, ref) < (2e-2 if dtype == torch.bfloat16 else 5e-3)


def test_core_16bit_inputs_without_autocast():
    """Half-precision q, k, v straight into the core (as on a GPU in .half()): computed in float32, no inf/NaN, while
    the official order of operations overflows float16 at this size (k * eff * N reaches N = 65536)."""
    g = torch.Generator().manual_seed(0)
    n = 256 * 256
    q, k, v = (torch.randn(1, 1, n, 16, generator=g) for _ in range(3))
    k[..., 0, :] += 30.  # one dominant key: its softmax weight is ~1, so the official k * eff * N is ~N * k
    rope = Rope2d(16)((256, 256))
    ref = rala_core(q.double(), k.double(), v.double(), (rope[0].double(), rope[1].double()), 0.25)
    out = rala_core(q.half(), k.half(), v.half(), rope, 0.25)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert _rel(out, ref) < 5e-3
    k16 = F.elu(k.half()) + 1
    eff = torch.softmax((0.25 * (F.elu(q.half()) + 1).mean(-2, keepdim=True) @ k16.transpose(-1, -2)).float(), -1)
    assert not torch.isfinite(k16 * eff.half().transpose(-1, -2) * n).all()


@pytest.mark.parametrize('mode', ['rala', 'softmax'])
@pytest.mark.parametrize('channels_last', [True, False])
def test_gradients_match_official_math(mode, channels_last):
    """Input and parameter gradients (float64) equal those of the official math through autograd: covers the one-pass
    backward of ``elu + 1``, the single split of ``qkvo`` and the Linear form of the 1x1 convs on channels-last maps."""
    mod = _layer(32, 2, mode)
    x = torch.randn(2, 32, 6, 7, dtype=torch.float64)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    g = torch.randn(2, 32, 6, 7, dtype=torch.float64)
    params = [x, *mod.parameters()]
    ours = torch.autograd.grad((mod(x, Rope2d(16).double()((6, 7))) * g).sum(), params)
    ref = torch.autograd.grad((_reference(mod, x) * g).sum(), params)
    for name, a, b in zip(['x'] + [n for n, _ in mod.named_parameters()], ours, ref):
        assert _rel(a, b) < 1e-10, name


def test_elu_plus_one_backward():
    """The one-pass gradient ``min(y, 1)`` of ``elu(x) + 1``: gradcheck in float64, and equal to F.elu's autograd in
    float32 on both sides of 0 (0 itself included)."""
    from zoo.layers.rala import _EluPlusOne, elu_plus_one
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_EluPlusOne.apply, (x,))
    x = torch.cat([torch.randn(1000) * 4, torch.tensor([0., 1e-30, -1e-30, 20., -20.])]).requires_grad_()
    y = elu_plus_one(x)
    assert y.grad_fn is not None and 'EluPlusOne' in type(y.grad_fn).__name__
    g = torch.randn_like(x)
    ours, = torch.autograd.grad(y, x, g)
    ref, = torch.autograd.grad(F.elu(x) + 1, x, g)
    torch.testing.assert_close(y, F.elu(x) + 1)
    torch.testing.assert_close(ours, ref)
    # per-sample gradients (torch.func) run through the custom backward too
    from torch.func import grad, vmap
    xs = torch.randn(4, 10)
    got = vmap(grad(lambda xi: elu_plus_one(xi).square().sum()))(xs)
    torch.testing.assert_close(got, vmap(grad(lambda xi: (F.elu(xi) + 1).square().sum()))(xs))


def test_any_size_and_batch_independence():
    mod = _layer(32, 2, 'rala', dtype=torch.float32)
    rope = Rope2d(16)
    x = torch.randn(3, 32, 11, 5)
    with torch.no_grad():
        out = mod(x, rope((11, 5)))
        torch.testing.assert_close(out[1:2], mod(x[1:2], rope((11, 5))))
    assert out.shape == x.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        RalaAttention2d(30, 4)
    with pytest.raises(ValueError, match='multiple of 4'):
        RalaAttention2d(36, 6)
    with pytest.raises(ValueError, match='mode'):
        RalaAttention2d(32, 1, mode='linear')
    with pytest.raises(ValueError, match='head_dim'):
        Rope2d(6)
    mod = RalaAttention2d(32, 2)
    rope = Rope2d(16)
    with pytest.raises(ValueError, match=r'x must have shape \[B, 32, H, W\]'):
        mod(torch.randn(1, 16, 4, 4), rope((4, 4)))
    with pytest.raises(ValueError, match='rope tables'):
        mod(torch.randn(1, 32, 4, 4), rope((4, 5)))
    with pytest.raises(ValueError, match='x must be non-empty'):
        mod(torch.randn(0, 32, 4, 4), rope((4, 4)))
    with pytest.raises(ValueError, match=r'size must be \(H, W\) with H, W >= 1'):
        rope((0, 4))
    with pytest.raises(TypeError, match='floating-point.*int64'):
        mod(torch.ones(1, 32, 4, 4, dtype=torch.long), rope((4, 4)))
    with pytest.raises(TypeError, match=r'dtype of the parameters \(torch.float32.*float64'):
        mod(torch.randn(1, 32, 4, 4, dtype=torch.float64), rope((4, 4)))
    q = torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match='q, k and v must all be'):
        rala_core(q, q, q[:, :, :15], rope((4, 4)), 0.25)
    with pytest.raises(ValueError, match=r'rope tables must be \[16, 16\]'):
        rala_core(q, q, q, rope((4, 5)), 0.25)
