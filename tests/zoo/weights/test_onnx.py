"""ONNX export (``zoo.weights.onnx``, the standard ``torch.onnx.export(dynamo=True)``) of every registered tiny
variant, run in onnxruntime on CPU against PyTorch (max abs difference <= 1e-4 in float32).

The variants are discovered like the contract test does: a family that registers a ``*_test`` model is covered.
Every export has a dynamic batch (checked at batch 1 and 3, traced at 2). The first tiny variant of each family
also tries dynamic height and width (checked at a second, non-square size); the others export with static ones to
keep the suite fast. ``nat_test`` must be dynamic in all three axes; BiFormer's region split bakes the traced size
into the graph, so it must fall back to static height and width.
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
from zoo.weights.onnx import check_onnx, export_onnx, onnx_export_mode


def _tiny_by_module():
    out = {}
    for name in sorted(timm.list_models('*_test')):
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith('zoo.models.'):
            out.setdefault(module, []).append(name)
    return out


BY_MODULE = _tiny_by_module()
TINY = sorted(n for names in BY_MODULE.values() for n in names)
FIRST = {names[0] for names in BY_MODULE.values()}
ATOL = 1e-4


def test_every_family_has_tiny_variants_here():
    assert {'zoo.models.nat', 'zoo.models.biformer', 'zoo.models.maxvit'} <= set(BY_MODULE)


@pytest.mark.parametrize('name', TINY)
def test_onnx_matches_pytorch(tmp_path, name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    path = str(tmp_path / f'{name}.onnx')
    info = export_onnx(model, path, dynamic_hw=None if name in FIRST else False, optimize=False)
    assert info['max_abs_diff'] <= ATOL and info['dynamic_batch']
    graph = onnx.load(path).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param, 'batch axis is not dynamic'
    assert bool(dims[2].dim_param and dims[3].dim_param) == info['dynamic_hw']
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


def test_check_onnx_catches_a_wrong_graph(tmp_path):
    model = timm.create_model('nat_test').eval()
    path = str(tmp_path / 'nat.onnx')
    export_onnx(model, path, dynamic_hw=False, optimize=False)
    with torch.no_grad():  # a planted difference: the exported graph no longer equals the model
        model.get_classifier().bias.add_(1e-3)
    with pytest.raises(ValueError, match='differs from PyTorch'):
        check_onnx(model, path, [torch.randn(1, 3, 32, 32)])


def test_export_mode_is_what_torch_onnx_export_needs(tmp_path):
    """The standard exporter fails on NAT's default path (the issue's report) and succeeds inside the mode."""
    model = timm.create_model('nat_test').eval()
    x = torch.randn(1, 3, 32, 32)
    with onnx_export_mode(model):
        program = torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False)
    assert program is not None


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
