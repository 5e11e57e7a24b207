"""ONNX export (``zoo.weights.onnx``, the standard ``torch.onnx.export(dynamo=True)``) of every registered tiny
variant, run in onnxruntime on CPU against PyTorch (max abs difference <= 1e-4 in float32).

The variants are discovered like the contract test does: a family that registers a ``*_test`` model is covered.
Every export has a dynamic batch (checked at batch 1 and 3, traced at 2); the parametrized exports keep height
and width static and skip the graph optimisation, which keeps each to a few seconds on an idle core (an export with
dynamic height and width costs 2-3x as much). Dynamic height and width are checked on ``nat_test`` (dynamic in all
three axes, run at a second, non-square size) and BiFormer (its region split bakes the traced size into the graph:
refused with ``dynamic_hw=True``, static by default).
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.weights.__main__ import main as weights_main
from zoo.weights.onnx import check_onnx, export_onnx


def _tiny_by_module():
    out = {}
    for name in sorted(timm.list_models('*_test')):
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith('zoo.models.'):
            out.setdefault(module, []).append(name)
    return out


BY_MODULE = _tiny_by_module()
TINY = sorted(n for names in BY_MODULE.values() for n in names)
ATOL = 1e-4
# ONNX Conv needs a static group count: these fold the batch into depthwise-conv groups
STATIC_BATCH = ('inline_',)


def test_every_family_has_tiny_variants_here():
    assert {'zoo.models.nat', 'zoo.models.biformer', 'zoo.models.maxvit'} <= set(BY_MODULE)


@pytest.mark.parametrize('name', TINY)
def test_onnx_matches_pytorch(tmp_path, name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    path = str(tmp_path / f'{name}.onnx')
    info = export_onnx(model, path, dynamic_hw=False, optimize=False)
    assert info['max_abs_diff'] <= ATOL
    graph = onnx.load(path).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert bool(dims[0].dim_param) == info['dynamic_batch']
    # only a graph that folds the batch into conv groups (InLine's depthwise convs) keeps the traced batch
    assert info['dynamic_batch'] or name.startswith(STATIC_BATCH), info.get('static_reason')
    assert not info['dynamic_hw'] and dims[2].dim_value and dims[3].dim_value
    # the custom ops were translated, not left as opaque nodes
    assert not [n.op_type for n in graph.node if n.domain.startswith('zoo')]
    # the model is left as it was: its fast paths back on, no backend forced
    assert 'ZOO_NA_BACKEND' not in os.environ and 'ZOO_BRA_BACKEND' not in os.environ
    fused = [m.fused_attn for m in model.modules() if isinstance(getattr(m, 'fused_attn', None), bool)]
    assert fused == [m.fused_attn for m in timm.create_model(name).modules()
                     if isinstance(getattr(m, 'fused_attn', None), bool)]


def test_dynamic_hw_where_the_model_allows_it(tmp_path):
    model = timm.create_model('nat_test').eval()
    assert export_onnx(model, str(tmp_path / 'nat.onnx'), optimize=False)['dynamic_hw']
    session = ort.InferenceSession(str(tmp_path / 'nat.onnx'), providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(session.run(None, {'image': x.numpy()})[0] - ref).max() <= ATOL
    biformer = timm.create_model('biformer_test').eval()
    with pytest.raises(ValueError, match='does not generalise'):
        export_onnx(biformer, str(tmp_path / 'bf.onnx'), dynamic_hw=True, optimize=False)


def test_onnx_cli_with_weights(tmp_path, capsys):
    model = timm.create_model('nat_test', num_classes=5).eval()
    weights = tmp_path / 'w.pth'
    torch.save({'model': model.state_dict(), 'epoch': 1}, weights)
    out = tmp_path / 'nat.onnx'
    assert weights_main(['onnx', '--model', 'nat_test', '--file', str(weights), '--out', str(out),
                         '--static-hw']) == 0
    assert 'dynamic batch (height and width fixed)' in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert np.abs(session.run(None, {'image': x.numpy()})[0] - model(x).numpy()).max() <= ATOL
        model.get_classifier().bias.add_(1e-3)  # a planted difference: the graph no longer equals the model
    with pytest.raises(ValueError, match='differs from PyTorch'):
        check_onnx(model, str(out), [x])
