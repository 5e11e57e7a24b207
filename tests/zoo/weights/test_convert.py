"""``python -m zoo.weights convert`` for every family, on the stored official-layout micro checkpoints of
``tests/fixtures`` (the stored cases of ``CASES`` in ``tests/zoo/models/test_official_fixtures.py``): a family that
adds a stored case is covered by it, and a registered family without one fails ``test_every_family_has_a_case``.

Each case converts the official file (plain, and wrapped with an EMA, training args and numpy scalars as released
files are), reloads the output with ``timm.create_model('local-dir:...', pretrained=True)`` and compares its logits
with the official code's (relative error <= 1e-4).
"""
import argparse
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import zoo  # noqa: F401  (registers the models)
from zoo.weights.__main__ import main as weights_main
from zoo.weights.convert import convert_checkpoint, filter_fn_for

TESTS = Path(__file__).resolve().parents[2]
FIXTURES = TESTS / 'fixtures'
RTOL = 1e-4
# families whose released PyTorch weights are already in our layout (no official-layout fixture exists)
NATIVE_LAYOUT = {
    'zoo.models.maxvit': 'official code is TensorFlow; the PyTorch weights are timm\'s port, whose layout is ours',
}


def _official_fixtures_module():
    spec = importlib.util.spec_from_file_location(
        'zoo_test_official_fixtures', TESTS / 'zoo' / 'models' / 'test_official_fixtures.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _official_fixtures_module().CASES


def _stored_cases():
    out = []
    for family, cases in CASES.items():
        for case, (name, kwargs) in cases.items():
            if case != name:  # a seeded case is named after its variant; a stored one after its fixture
                out.append(pytest.param(family, case, id=f'{family}-{case}'))
    return out


STORED = _stored_cases()


@functools.lru_cache(maxsize=None)
def _family(family):
    with open(FIXTURES / f'{family}_official.json') as f:
        meta = json.load(f)
    return meta, load_file(str(FIXTURES / f'{family}_official.safetensors'))


def _zoo_modules():
    return {timm.models.model_entrypoint(n).__module__ for n in timm.list_models()
            if timm.models.model_entrypoint(n).__module__.startswith('zoo.models.')}


def _case_module(name):
    return timm.models.model_entrypoint(name).__module__


def test_every_family_has_a_case():
    covered = {_case_module(CASES[family][case][0]) for family, case in (p.values for p in STORED)}
    missing = sorted(_zoo_modules() - covered - set(NATIVE_LAYOUT))
    assert not missing, f'families without a stored official-layout fixture case to convert: {missing}'


def _official_logits_error(out_dir, family, case):
    meta, tensors = _family(family)
    spec = meta['cases'][case]
    model = timm.create_model(f'local-dir:{out_dir}', pretrained=True).eval()
    h, w = spec['input_crop']
    with torch.no_grad():
        ours = model(tensors['input'][..., :h, :w].float())
    ref = tensors[f'{case}.logits']
    return float((ours.double() - ref).norm() / ref.norm()), model


@pytest.mark.parametrize(('family', 'case'), STORED)
def test_convert_official_file(tmp_path, family, case):
    meta, _ = _family(family)
    name, kwargs = CASES[family][case]
    path = FIXTURES / meta['cases'][case]['weights']
    info = convert_checkpoint(name, str(path), str(tmp_path / 'out'), model_kwargs=kwargs)
    assert info['max_abs_diff'] == 0 and info['weights_entry'] == '(top level)'
    assert {p.name for p in (tmp_path / 'out').iterdir()} >= {'model.safetensors', 'config.json'}
    err, model = _official_logits_error(tmp_path / 'out', family, case)
    assert err <= RTOL, f'{family}/{case}: relative error {err:.3g} vs the official logits'
    assert model.num_classes == kwargs['num_classes']


@pytest.mark.parametrize(('family', 'case'), STORED)
def test_convert_wrapped_file_model_and_ema(tmp_path, family, case):
    """A released-style file: {'model', 'model_ema', 'optimizer', 'args', 'epoch', numpy scalars}; the default is
    'model' (the official loaders' choice), ``--weights ema`` takes the EMA."""
    meta, _ = _family(family)
    name, kwargs = CASES[family][case]
    official = load_file(str(FIXTURES / meta['cases'][case]['weights']))
    ema = {k: v * 1.5 if v.is_floating_point() else v for k, v in official.items()}
    path = tmp_path / 'official.pth'
    torch.save({'model': official, 'model_ema': ema, 'optimizer': {'state': {}, 'param_groups': []},
                'args': argparse.Namespace(model=name, lr=1e-3), 'epoch': 299, 'max_accuracy': np.float64(80.1)},
               path)
    model_kwargs = json.dumps(kwargs)
    assert weights_main(['convert', '--model', name, '--official', str(path), '--out', str(tmp_path / 'model'),
                         '--model-kwargs', model_kwargs]) == 0
    err, _ = _official_logits_error(tmp_path / 'model', family, case)
    assert err <= RTOL, f'{family}/{case}: default (model) weights: relative error {err:.3g}'
    assert weights_main(['convert', '--model', name, '--official', str(path), '--out', str(tmp_path / 'ema'),
                         '--model-kwargs', model_kwargs, '--weights', 'ema']) == 0
    saved = load_file(str(tmp_path / 'ema' / 'model.safetensors'))
    model = timm.create_model(name, **kwargs)
    expected = filter_fn_for(name)(ema, model)
    raw = filter_fn_for(name)(official, model)
    assert set(saved) == set(expected)
    assert all(torch.equal(saved[k], expected[k].to(saved[k].dtype)) for k in saved), 'not the EMA weights'
    assert not all(torch.equal(saved[k], raw[k].to(saved[k].dtype)) for k in saved)


def test_convert_wrong_model_names_the_keys(tmp_path):
    family, case = STORED[0].values
    meta, _ = _family(family)
    path = FIXTURES / meta['cases'][case]['weights']
    other = next(n for n in sorted(timm.list_models('*_test'))
                 if _case_module(n) != _case_module(CASES[family][case][0]) and _case_module(n).startswith('zoo.'))
    with pytest.raises(ValueError, match='missing keys|unexpected keys|shape mismatches'):
        convert_checkpoint(other, str(path), str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_convert_mismatched_shapes_are_named(tmp_path):
    family, case = STORED[0].values
    meta, _ = _family(family)
    name, kwargs = CASES[family][case]
    official = load_file(str(FIXTURES / meta['cases'][case]['weights']))
    key = next(k for k in official if k.endswith('.weight') and official[k].dim() == 1 and 'head' not in k)
    official[key] = torch.ones(official[key].shape[0] + 2)
    bad = tmp_path / 'bad.pth'
    torch.save(official, bad)
    with pytest.raises(ValueError, match='shape mismatches'):
        convert_checkpoint(name, str(bad), str(tmp_path / 'out'), model_kwargs=kwargs)


def test_convert_cli_errors(tmp_path, capsys):
    family, case = STORED[0].values
    meta, _ = _family(family)
    name, _ = CASES[family][case]
    path = str(FIXTURES / meta['cases'][case]['weights'])
    with pytest.raises(SystemExit) as info:
        weights_main(['convert', '--model', 'no_such_model', '--official', path, '--out', str(tmp_path)])
    assert info.value.code == 2 and 'no_such_model' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        weights_main(['convert', '--model', name, '--official', path, '--out', str(tmp_path), '--weights', 'ema'])
    assert 'holds no EMA' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        weights_main(['convert', '--model', name, '--official', path, '--out', str(tmp_path),
                      '--model-kwargs', '[1]'])
    assert 'JSON object' in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # the model's TypeError for a keyword: an error line, not a traceback
        weights_main(['convert', '--model', name, '--official', path, '--out', str(tmp_path),
                      '--model-kwargs', '{"mlp_ratio": "x"}'])
    assert info.value.code == 2 and "mlp_ratio must be a number, got mlp_ratio='x'" in capsys.readouterr().err


def test_convert_native_layout_family(tmp_path):
    """MaxViT (no official-layout fixture: see NATIVE_LAYOUT) converts a timm-layout file through its filter."""
    model = timm.create_model('maxvit_zoo_test', num_classes=7).eval()
    path = tmp_path / 'maxvit.pth'
    torch.save({'state_dict': model.state_dict(), 'epoch': 3}, path)
    info = convert_checkpoint('maxvit_zoo_test', str(path), str(tmp_path / 'out'))
    assert info['num_classes'] == 7 and info['weights_entry'] == 'state_dict'
    reloaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    x = torch.randn(1, 3, *model.pretrained_cfg['input_size'][1:])
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_unsafe_official_file_refused(tmp_path):
    family, case = STORED[0].values
    name, kwargs = CASES[family][case]
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), 'w'))
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'x': Payload()}, path)
    with pytest.raises(ValueError, match='refused'):
        convert_checkpoint(name, str(path), str(tmp_path / 'out'), model_kwargs=kwargs)
    assert not marker.exists()


def test_output_paths_of_the_wrong_kind_are_named(tmp_path):
    """convert / export write folders, onnx a file: an existing file or folder in the other role is named before any
    work (export raised ``FileExistsError`` from ``os.mkdir``, onnx ``IsADirectoryError`` after the export)."""
    from zoo.weights.onnx import export_onnx
    model = timm.create_model('maxvit_zoo_test').eval()
    weights = tmp_path / 'maxvit.pth'
    torch.save(model.state_dict(), weights)
    with pytest.raises(ValueError, match=r"^out: '.*maxvit.pth' is a file; give the folder"):
        convert_checkpoint('maxvit_zoo_test', str(weights), str(weights))
    with pytest.raises(ValueError, match=r"^out: '.*' is a folder; give the file to write$"):
        export_onnx(model, str(tmp_path), optimize=False)
    from zoo.weights.export import export_checkpoint
    with pytest.raises(ValueError, match=r"^out: '.*maxvit.pth' is a file; give the folder"):
        export_checkpoint(str(weights), str(weights))


def test_onnx_of_a_hub_folder_checks_its_architecture(tmp_path):
    """A hub folder is built by timm from its config.json: asked for another model, the export named the asked one
    but traced the folder's."""
    from zoo.weights.onnx import load_model
    model = timm.create_model('maxvit_zoo_test', num_classes=7).eval()
    torch.save(model.state_dict(), tmp_path / 'maxvit.pth')
    convert_checkpoint('maxvit_zoo_test', str(tmp_path / 'maxvit.pth'), str(tmp_path / 'hub'))
    assert load_model('maxvit_zoo_test', str(tmp_path / 'hub')).num_classes == 7
    with pytest.raises(ValueError, match=r"holds 'maxvit_zoo_test' weights .*not 'nat_test': give --model "
                                         r"maxvit_zoo_test$"):
        load_model('nat_test', str(tmp_path / 'hub'))
    with pytest.raises(ValueError, match=r'has no config.json'):
        load_model('nat_test', str(tmp_path))
