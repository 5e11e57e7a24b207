"""NCHW stems and downsamplers against the official nn.Sequential layouts they replace (BiFormer)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.layers import ConvDownsample2d, ConvStem2d, PatchEmbed2d


def _perturb(module):
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith('running_var') else torch.randn_like(t) * 0.3)
    return module.eval()


def _load_renamed(module, official, names):
    """Load an official ``nn.Sequential``'s weights into ``module`` by renaming its index prefixes."""
    state = {}
    for key, value in official.state_dict().items():
        index, rest = key.split('.', 1)
        state[f'{names[int(index)]}.{rest}'] = value
    module.load_state_dict(state, strict=True)
    return module.eval()


def test_conv_stem_equals_official_biformer_stem():
    official = _perturb(nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16)))
    stem = _load_renamed(ConvStem2d(3, 16), official, {0: 'conv1', 1: 'norm1', 3: 'conv2', 4: 'norm2'})
    x = torch.randn(2, 3, 29, 34)
    torch.testing.assert_close(stem(x), official(x))
    assert stem(x).shape == (2, 16, 8, 9)


def test_conv_downsample_2d_equals_official():
    official = _perturb(nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16)))
    down = _load_renamed(ConvDownsample2d(8), official, {0: 'reduction', 1: 'norm'})
    x = torch.randn(2, 8, 7, 10)
    torch.testing.assert_close(down(x), official(x))
    assert ConvDownsample2d(8, bias=False).reduction.bias is None


@pytest.mark.parametrize('norm_first', [False, True], ids=['stem-conv-bn', 'down-bn-conv'])
def test_patch_embed_2d_equals_official(norm_first):
    if norm_first:  # BiFormer-STL downsampler: BN(C) -> conv2x2/s2
        official = _perturb(nn.Sequential(nn.BatchNorm2d(8), nn.Conv2d(8, 16, 2, 2)))
        layer = _load_renamed(PatchEmbed2d(2, 8, 16, norm_first=True), official, {0: 'norm', 1: 'proj'})
    else:  # BiFormer-STL stem: conv4x4/s4 -> BN
        official = _perturb(nn.Sequential(nn.Conv2d(8, 16, 4, 4), nn.BatchNorm2d(16)))
        layer = _load_renamed(PatchEmbed2d(4, 8, 16), official, {0: 'proj', 1: 'norm'})
    x = torch.randn(2, 8, 13, 18)  # not divisible: floored, as the official conv
    torch.testing.assert_close(layer(x), official(x))


def test_patch_embed_2d_pad():
    layer = _perturb(PatchEmbed2d(4, 3, 8, pad=True))
    x = torch.randn(1, 3, 13, 18)
    out = layer(x)
    assert out.shape == (1, 8, 4, 5)
    torch.testing.assert_close(out, layer(F.pad(x, (0, 2, 0, 3))))


@pytest.mark.parametrize(('call', 'match'), [
    (lambda: ConvStem2d(0, 16), 'in_chans'),
    (lambda: ConvStem2d(3, 1), 'hidden_dim'),
    (lambda: ConvDownsample2d(0), 'dim'),
    (lambda: PatchEmbed2d(0), 'patch_size'),
    (lambda: PatchEmbed2d(4, 3, 0), 'embed_dim'),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
