"""zoo.models.factory: the name check, the input size and creation, shared by training, export and benchmarks."""
import json

import pytest
import torch

from zoo.models import InputSpec, check_model_name, create_model, input_spec


def test_known_names_and_sources_pass():
    for name in ('nat_test', 'biformer_test', 'test_vit', 'nat_mini.in1k', 'hf-hub:org/repo', 'local-dir:/x'):
        check_model_name(name)


def test_unknown_name_names_close_matches():
    with pytest.raises(ValueError, match=r"'dinat_s_tinny' is not a registered.*Close names: .*dinat_s_tiny"):
        check_model_name('dinat_s_tinny')
    with pytest.raises(ValueError, match='Close names: .*biformer_tiny'):
        create_model('biformer_tinny')
    with pytest.raises(ValueError, match='not a registered'):
        input_spec('qqqqqq')


def test_input_spec():
    assert input_spec('nat_mini') == InputSpec((3, 224, 224), fixed=False)
    assert input_spec('dinat_large_384') == InputSpec((3, 384, 384), fixed=False)
    assert input_spec('vitrpb_small') == InputSpec((3, 224, 224), fixed=True)
    assert input_spec('swin_tiny_patch4_window7_224').fixed
    assert input_spec('hf-hub:org/repo') == InputSpec((3, 224, 224), fixed=False)


def test_input_spec_of_an_export_folder(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps(
        {'architecture': 'test_vit', 'pretrained_cfg': {'input_size': [3, 64, 64], 'fixed_input_size': True}}))
    assert input_spec(f'local-dir:{tmp_path}') == InputSpec((3, 64, 64), fixed=True)


@pytest.mark.parametrize('input_size', [64, (64, 64), (3, 64, 64)], ids=['int', 'hw', 'chw'])
def test_fixed_size_model_is_built_for_the_size_it_is_fed(input_size):
    model = create_model('test_vit', input_size=input_size, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    # an explicit img_size wins
    assert create_model('test_vit', input_size=input_size, img_size=96).patch_embed.img_size == (96, 96)


def test_other_models_ignore_the_input_size():
    torch.manual_seed(0)
    a = create_model('nat_test', input_size=48)
    torch.manual_seed(0)
    b = create_model('nat_test')
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_malformed_input_size():
    with pytest.raises(ValueError, match='input_size'):
        create_model('nat_test', input_size=(1, 3, 64, 64))
    # a string was split into characters ("img_size=('6', '4')"), a float failed on len()
    for bad in ('64', 64.5, (64, 64.0), True):
        with pytest.raises(TypeError, match=r'^input_size must be S, \(H, W\) or \(C, H, W\) of ints, got '):
            create_model('vitrpb_test', input_size=bad)
    for bad in (0, (3, 0, 64)):
        with pytest.raises(ValueError, match=r'^input_size must be S, \(H, W\) or \(C, H, W\) of ints >= 1'):
            create_model('vitrpb_test', input_size=bad)


def test_feature_indices_of_another_type_are_named():
    import timm
    for bad in ('0', 1.0, [0, 'x']):
        with pytest.raises(TypeError, match=r'^indices must be an int \(the last n features\), a sequence of ints'):
            timm.create_model('nat_test', features_only=True, out_indices=bad)
