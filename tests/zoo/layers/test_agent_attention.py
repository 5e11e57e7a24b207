"""Agent attention against a direct implementation of the official math (LeapLabTHU/Agent-Attention
``agent_{swin,pvt,deit}.py`` ``AgentAttention.forward``), written here from the official code on the layer's own
parameters: square and non-square maps, a class token, spatial reduction, another resolution than the one the biases
were built for (interpolated biases), SDPA and explicit paths, and bad arguments."""
import pytest
import torch
import torch.nn.functional as F

from zoo.layers import AgentAttention, AgentSpatialReductionAttentionCl, agent_pool_size


def _resize(bias, length, dim):
    """Linear interpolation along one axis (the documented extension of the row / column biases)."""
    if bias.shape[dim] == length:
        return bias
    moved = bias.movedim(dim, -1)
    out = F.interpolate(moved.reshape(1, -1, moved.shape[-1]), size=length, mode='linear', align_corners=False)
    return out.reshape(*moved.shape[:-1], length).movedim(-1, dim)


def official_agent(p, x, H, W, heads, agent_num, prefix=0, sr=1, q_kv=False):
    """The official forward on tokens ``x [b, prefix + H*W, c]`` with parameter dict ``p`` (official names)."""
    b, n, c = x.shape
    d = c // heads
    scale = d ** -0.5
    if q_kv:
        q = F.linear(x, p['q.weight'], p['q.bias'])
        src = x
        Hk, Wk = H, W
        if sr > 1:
            m = F.conv2d(x.transpose(1, 2).reshape(b, c, H, W), p['sr.weight'], p['sr.bias'], stride=sr)
            Hk, Wk = m.shape[2:]
            src = F.layer_norm(m.flatten(2).transpose(1, 2), (c,), p['norm.weight'], p['norm.bias'])
        k, v = F.linear(src, p['kv.weight'], p['kv.bias']).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
    else:
        q, k, v = F.linear(x, p['qkv.weight'], p['qkv.bias']).reshape(b, n, 3, c).permute(2, 0, 1, 3)
        Hk, Wk = H, W
    pool = int(agent_num ** 0.5)
    agent = F.adaptive_avg_pool2d(q[:, prefix:].reshape(b, H, W, c).permute(0, 3, 1, 2), (pool, pool))
    agent = agent.reshape(b, c, -1).permute(0, 2, 1).reshape(b, agent_num, heads, d).permute(0, 2, 1, 3)
    q = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    k = k.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    v = v.reshape(b, -1, heads, d).permute(0, 2, 1, 3)

    pb1 = F.interpolate(p['an_bias'], size=(Hk, Wk), mode='bilinear').reshape(1, heads, agent_num, -1)
    pb2 = (_resize(p['ah_bias'], Hk, 3) + _resize(p['aw_bias'], Wk, 4)).reshape(1, heads, agent_num, -1)
    pb = (pb1 + pb2).repeat(b, 1, 1, 1)
    if prefix:
        pb = torch.cat([p['ac_bias'].repeat(b, 1, 1, 1), pb], dim=-1)
    agent_v = ((agent * scale) @ k.transpose(-2, -1) + pb).softmax(dim=-1) @ v

    ab1 = F.interpolate(p['na_bias'], size=(H, W), mode='bilinear').reshape(1, heads, agent_num, -1)
    ab1 = ab1.permute(0, 1, 3, 2)
    ab2 = (_resize(p['ha_bias'], H, 2) + _resize(p['wa_bias'], W, 3)).reshape(1, heads, -1, agent_num)
    ab = (ab1 + ab2).repeat(b, 1, 1, 1)
    if prefix:
        ab = torch.cat([p['ca_bias'].repeat(b, 1, 1, 1), ab], dim=-2)
    out = ((q * scale) @ agent.transpose(-2, -1) + ab).softmax(dim=-1) @ agent_v
    out = out.transpose(1, 2).reshape(b, n, c)
    vm = v[:, :, prefix:].transpose(1, 2).reshape(b, Hk, Wk, c).permute(0, 3, 1, 2)
    if (Hk, Wk) != (H, W):
        vm = F.interpolate(vm, size=(H, W), mode='bilinear')
    dwc = F.conv2d(vm, p['dwc.weight'], p['dwc.bias'], padding=1, groups=c).permute(0, 2, 3, 1).reshape(b, H * W, c)
    out = torch.cat([out[:, :prefix], out[:, prefix:] + dwc], dim=1)
    return F.linear(out, p['proj.weight'], p['proj.bias'])


def _randomize(layer):
    torch.manual_seed(1)
    with torch.no_grad():
        for t in layer.parameters():
            t.copy_(torch.randn_like(t) * 0.3)
    return layer


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('size, resolution', [((8, 8), (8, 8)), ((6, 10), (6, 10)), ((11, 7), (8, 8)),
                                              ((5, 5), (8, 6))])
def test_qkv_layout_matches_official_math(size, resolution, fused):
    layer = _randomize(AgentAttention(24, num_heads=3, agent_num=4, resolution=resolution)).double()
    layer.fused_attn = fused
    H, W = size
    x = torch.randn(2, H, W, 24, dtype=torch.float64)
    ref = official_agent(dict(layer.named_parameters()), x.reshape(2, H * W, 24), H, W, 3, 4)
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.reshape(2, H * W, 24), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize('size', [(6, 6), (4, 7)])
def test_class_token_matches_official_math(size):
    layer = _randomize(AgentAttention(16, num_heads=2, agent_num=9, resolution=(6, 6), num_prefix_tokens=1)).double()
    H, W = size
    x = torch.randn(2, 1 + H * W, 16, dtype=torch.float64)
    out = layer(x, size=size)
    ref = official_agent(dict(layer.named_parameters()), x, H, W, 2, 9, prefix=1)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize('sr, size', [(1, (8, 8)), (2, (8, 8)), (2, (10, 6)), (1, (7, 9))])
def test_spatial_reduction_matches_official_math(sr, size):
    layer = _randomize(AgentSpatialReductionAttentionCl(16, num_heads=2, agent_num=4, resolution=8, sr_ratio=sr))
    layer = layer.double()
    H, W = size
    x = torch.randn(2, H, W, 16, dtype=torch.float64)
    ref = official_agent(dict(layer.named_parameters()), x.reshape(2, H * W, 16), H, W, 2, 4, sr=sr, q_kv=True)
    torch.testing.assert_close(layer(x).reshape(2, H * W, 16), ref, atol=1e-10, rtol=1e-10)


def test_biases_and_dwc_matter():
    """Planted bugs: zeroing any bias or the DWC changes the output (each term is wired in)."""
    layer = _randomize(AgentAttention(16, num_heads=2, agent_num=4, resolution=(6, 6), num_prefix_tokens=1)).eval()
    x = torch.randn(1, 37, 16)
    ref = layer(x, size=(6, 6))
    for name in ('an_bias', 'na_bias', 'ah_bias', 'aw_bias', 'ha_bias', 'wa_bias', 'ac_bias', 'ca_bias', 'dwc.weight'):
        param = layer.get_parameter(name)
        saved = param.detach().clone()
        with torch.no_grad():
            param.zero_()
        assert not torch.allclose(layer(x, size=(6, 6)), ref, atol=1e-4), name
        with torch.no_grad():
            param.copy_(saved)


def test_official_parameter_shapes():
    layer = AgentAttention(96, num_heads=3, agent_num=9, resolution=56)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes['an_bias'] == shapes['na_bias'] == (3, 9, 7, 7)
    assert shapes['ah_bias'] == (1, 3, 9, 56, 1) and shapes['aw_bias'] == (1, 3, 9, 1, 56)
    assert shapes['ha_bias'] == (1, 3, 56, 1, 9) and shapes['wa_bias'] == (1, 3, 1, 56, 9)
    assert shapes['qkv.weight'] == (288, 96) and shapes['dwc.weight'] == (96, 1, 3, 3)
    pvt = AgentSpatialReductionAttentionCl(64, num_heads=1, agent_num=9, resolution=56, sr_ratio=2)
    shapes = {k: tuple(v.shape) for k, v in pvt.state_dict().items()}
    assert shapes['ah_bias'] == (1, 1, 9, 28, 1) and shapes['ha_bias'] == (1, 1, 56, 1, 9)
    assert {'q.weight', 'kv.weight', 'sr.weight', 'norm.weight', 'proj.weight'} <= set(shapes)


def test_backward_and_dropout_train():
    layer = AgentAttention(16, num_heads=2, agent_num=4, resolution=5, attn_drop=0.1).train()
    x = torch.randn(2, 5, 7, 16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match='agent_num'):
        AgentAttention(16, num_heads=2, agent_num=8)
    with pytest.raises(ValueError, match='agent_num'):
        agent_pool_size(0)
    with pytest.raises(ValueError, match='num_heads'):
        AgentAttention(16, num_heads=3)
    with pytest.raises(ValueError, match='resolution'):
        AgentAttention(16, num_heads=2, agent_num=4, resolution=(0, 4))
    with pytest.raises(ValueError, match='sr_ratio'):
        AgentSpatialReductionAttentionCl(16, num_heads=2, agent_num=4, resolution=8, sr_ratio=0)
    with pytest.raises(ValueError, match='resolution'):
        AgentSpatialReductionAttentionCl(16, num_heads=2, agent_num=4, resolution=2, sr_ratio=4)
    layer = AgentAttention(16, num_heads=2, agent_num=4, resolution=4)
    with pytest.raises(ValueError, match='shape'):
        layer(torch.randn(1, 4, 4, 8))
    with pytest.raises(ValueError, match='shape'):
        layer(torch.randn(1, 16, 16))  # tokens need size=
    cls = AgentAttention(16, num_heads=2, agent_num=4, resolution=4, num_prefix_tokens=1)
    with pytest.raises(ValueError, match='tokens'):
        cls(torch.randn(1, 16, 16), size=(4, 4))
    pvt = AgentSpatialReductionAttentionCl(16, num_heads=2, agent_num=4, resolution=8)
    with pytest.raises(ValueError, match='shape'):
        pvt(torch.randn(1, 64, 16))


def test_inference_caches_follow_parameter_updates():
    """No-grad forwards reuse cached biases / pooling matrices; an in-place update (optimizer step, load) and a new
    map size are seen, and a gradient-recording forward reaches every bias."""
    layer = _randomize(AgentAttention(16, num_heads=2, agent_num=4, resolution=6)).eval()
    x = torch.randn(1, 6, 6, 16)
    with torch.no_grad():
        first = layer(x)
        torch.testing.assert_close(layer(x), first)
        layer.na_bias.add_(torch.randn_like(layer.na_bias))
        changed = layer(x)
    assert not torch.allclose(changed, first)
    layer.fused_attn = False
    with torch.no_grad():
        torch.testing.assert_close(layer(x), changed)  # the explicit path (adaptive pool) agrees with the cache
        assert layer(torch.randn(1, 5, 9, 16)).shape == (1, 5, 9, 16)
    layer(x).sum().backward()
    assert layer.na_bias.grad is not None and layer.ah_bias.grad is not None


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_torchscript_matches_official_math():
    """The scripted layers (no caches: biases summed and agents pooled per call; PVT's reduction written without the
    linear-SRA branch) give the official math at non-square sizes, another resolution, a class token and sr 2."""
    qkv = _randomize(AgentAttention(24, num_heads=3, agent_num=4, resolution=(8, 6))).double().eval()
    cls = _randomize(AgentAttention(16, num_heads=2, agent_num=9, resolution=(6, 6), num_prefix_tokens=1))
    cls = cls.double().eval()
    pvt = _randomize(AgentSpatialReductionAttentionCl(16, num_heads=2, agent_num=4, resolution=8, sr_ratio=2))
    pvt = pvt.double().eval()
    for layer in (qkv, cls, pvt):
        layer.fused_attn = True  # the eager fast path would use the caches; the scripted one never does
    scripted = [torch.jit.script(m) for m in (qkv, cls, pvt)]
    x = torch.randn(2, 5, 9, 24, dtype=torch.float64)
    ref = official_agent(dict(qkv.named_parameters()), x.reshape(2, 45, 24), 5, 9, 3, 4)
    torch.testing.assert_close(scripted[0](x).reshape(2, 45, 24), ref, atol=1e-10, rtol=1e-10)
    t = torch.randn(2, 1 + 4 * 7, 16, dtype=torch.float64)
    ref = official_agent(dict(cls.named_parameters()), t, 4, 7, 2, 9, prefix=1)
    torch.testing.assert_close(scripted[1](t, size=(4, 7)), ref, atol=1e-10, rtol=1e-10)
    m = torch.randn(2, 10, 6, 16, dtype=torch.float64)
    ref = official_agent(dict(pvt.named_parameters()), m.reshape(2, 60, 16), 10, 6, 2, 4, sr=2, q_kv=True)
    torch.testing.assert_close(scripted[2](m).reshape(2, 60, 16), ref, atol=1e-10, rtol=1e-10)
    with pytest.raises(torch.jit.Error, match='tokens'):
        scripted[1](t, size=(4, 6))


@pytest.mark.parametrize('size, p', [((5, 5), 2), ((16, 16), 3), ((7, 9), 4), ((3, 2), 7), ((8, 8), 2)])
def test_pooling_matrix_is_adaptive_avg_pool(size, p):
    """The bin-averaging matrix (cached in eager; built from tensor ops in the exported graph, where a traced
    ``adaptive_avg_pool2d`` keeps the traced size's kernel) equals PyTorch's adaptive pool, divisible or not."""
    from zoo.layers.agent_attention import _adaptive_pool_matrix
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    ref = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), p).flatten(2).transpose(1, 2)
    mat = _adaptive_pool_matrix(size, p, 'cpu', torch.float64)
    torch.testing.assert_close(mat @ x.reshape(2, -1, 8), ref, rtol=0, atol=1e-12)
