"""Isotropic NAT / DiNAT / ViT-RPB module (zoo.models.nat_isotropic): shared blocks, filter and feature interface."""
import pytest
import timm
import torch

from zoo.layers import NeighborhoodAttention2d, PreNormBlockCl, RpbAttention2d
from zoo.models import nat, nat_isotropic
from zoo.models._helpers import IsotropicModelMixin


def _old_native(model):
    """The model's state dict under the names of exports made before the shared block (``gamma1`` / ``gamma2``)."""
    out = {}
    for key, value in model.state_dict().items():
        for i in ('1', '2'):
            key = key.replace(f'.ls{i}.gamma', f'.gamma{i}')
        out[key] = value
    return out


@pytest.mark.parametrize('name', ['nat_test', 'dinat_s_test', 'dinat_isotropic_test', 'vitrpb_test'])
def test_filters_upgrade_layer_scale_names(name):
    model = timm.create_model(name, layer_scale=0.1)
    old = _old_native(model)
    assert any(k.endswith('.gamma1') for k in old)
    converted = nat.checkpoint_filter_fn(old, model)  # one filter for the NAT repository: defers for isotropic
    assert list(converted) == list(model.state_dict())
    if name.endswith('isotropic_test') or name == 'vitrpb_test':
        assert nat_isotropic.checkpoint_filter_fn(old, model).keys() == converted.keys()


def test_blocks_are_the_shared_pre_norm_block():
    model = timm.create_model('dinat_isotropic_test', layer_scale=1e-5)
    assert isinstance(model, IsotropicModelMixin)
    assert all(isinstance(b, PreNormBlockCl) and isinstance(b.attn, NeighborhoodAttention2d) for b in model.blocks)
    assert [b.attn.dilation[0] for b in model.blocks] == [1, 2, 1, 2]
    assert torch.equal(model.blocks[0].ls1.gamma, torch.full((64,), 1e-5))
    assert isinstance(timm.create_model('vitrpb_test').blocks[0].attn, RpbAttention2d)
    hier = timm.create_model('nat_test')
    assert all(isinstance(b, PreNormBlockCl) for s in hier.stages for b in s.blocks)


def test_norm_applies_to_every_intermediate():
    model = timm.create_model('nat_isotropic_test').eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        raw = model.forward_intermediates(x, indices=[0, 2], output_fmt='NHWC', intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[0, 2], norm=True, output_fmt='NHWC', intermediates_only=True)
    for r, n in zip(raw, normed):
        torch.testing.assert_close(n, model.norm(r))
