"""ONNX export (``zoo.weights.onnx``, the standard ``torch.onnx.export(dynamo=True)``) of every registered tiny
variant, run in onnxruntime on CPU against PyTorch (max abs difference <= 1e-4 in float32).

The variants are discovered like the contract test does: a family that registers a ``*_test`` model is covered.
One export per variant (traced at batch 2 at its cfg size, no graph optimisation: the exporter's decomposition and
translation dominate, a few seconds each on an idle core), checked in one onnxruntime session:

* dynamic batch for every variant: run at batch 1 and 3;
* dynamic height and width for every variant not in :data:`STATIC_HW`: run at a second, non-square size that is not
  a multiple of the traced one (:func:`zoo.weights.onnx._probe_size`), so a size baked into the graph fails;
* :data:`STATIC_HW` lists the variants whose graph specialises to the traced size, each with the reason (and models
  with ``fixed_input_size`` in their cfg are static); the export with ``dynamic_hw=True`` is refused for them
  (checked on RAVLT traced at a size with a 1 x 1 stage).
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
# name prefix -> why the exported graph keeps the traced height and width (none does for a model reason now: Swin
# windows, MaxViT partitions and every other size-dependent choice have a symbolic path while exporting)
STATIC_HW = {
    # generalises (checked by hand: max |diff| 5e-7 at the probe size) but its dynamic export takes ~3 min on one
    # core; exported static here to keep the suite short
    'dinat_s_test': 'dynamic export verified by hand, too slow for the suite (~3 min)',
}

# name -> traced input size, where the cfg size leaves a 1 x 1 stage map: torch.export specialises dims of size 1, so
# the graph would not generalise (the real variants trace at 224 px, whose last stage is 7 x 7)
TRACE_SIZE = {'ravlt_test': (3, 64, 64), 'flowformer_test': (3, 64, 64)}

# name prefix -> a size below the traced one at which the eager forward shrinks windows / partitions to the map (and
# drops the shift): the exported graph, which never shrinks them but masks padded keys, must agree there too
SHRINKING_SIZE = {'agent_swin': (24, 40), 'inline_swin': (24, 40), 'maxvit': (20, 36)}


def _static_hw(name):
    """In :data:`STATIC_HW`, or a model with a fixed input size (its cfg says so: ViT-RPB's position grid)."""
    return name.startswith(tuple(STATIC_HW)) or bool(timm.get_pretrained_cfg(name).fixed_input_size)


def test_every_family_has_tiny_variants_here():
    assert {'zoo.models.nat', 'zoo.models.biformer', 'zoo.models.maxvit'} <= set(BY_MODULE)


# seconds of one variant's export and checks (2-core VM, two workers busy); unlisted variants take 10-20 s
_EXPORT_SECONDS = {'litv2_test': 84, 'agent_swin_test': 67, 'inline_swin_test': 56, 'biformer_test': 38,
                   'agent_pvt_test': 34, 'biformer_stl_nchw_test': 34, 'maxvit_zoo_test': 31, 'dinat_test': 31,
                   'inline_pvt_test': 31, 'biformer_stl_test': 29, 'nat_test': 25, 'dinat_isotropic_test': 21}


def _balanced_groups(names, n):
    """``names`` in ``n`` groups of about equal export time (longest first, each to the lightest group)."""
    groups, load = [[] for _ in range(n)], [0.] * n
    for name in sorted(names, key=lambda m: (-_EXPORT_SECONDS.get(m, 15), m)):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += _EXPORT_SECONDS.get(name, 15)
    return groups


# the exports take most of the suite's ONNX time (up to 90 s a variant): a quarter of the variants here, the others
# in test_onnx_variants.py, test_onnx_variants_2.py and test_onnx_variants_3.py, so that pytest-xdist's
# --dist loadfile spreads them over both workers without one long file at the end
ONNX_GROUPS = _balanced_groups(TINY, 4)


@pytest.mark.parametrize('name', ONNX_GROUPS[0])
def test_onnx_matches_pytorch(tmp_path, name):
    check_variant_export(tmp_path, name)


def check_variant_export(tmp_path, name):
    """Export ``name`` with dynamic batch (and height and width unless static) and check it in onnxruntime."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    path = str(tmp_path / f'{name}.onnx')
    dynamic_hw = not _static_hw(name)
    info = export_onnx(model, path, input_size=TRACE_SIZE.get(name), dynamic_hw=dynamic_hw, dynamic_batch=True,
                       optimize=False)
    assert info['max_abs_diff'] <= ATOL
    assert info['dynamic_batch'] and info['dynamic_hw'] == dynamic_hw
    checked = info['checked_shapes']
    assert {s[0] for s in checked} >= {1, 3}
    if dynamic_hw:  # one onnxruntime session ran the batch sizes and a second, non-square image size
        assert len({s[2:] for s in checked}) == 2
    small = [size for prefix, size in SHRINKING_SIZE.items() if name.startswith(prefix)]
    if small:
        assert check_onnx(model, path, [torch.randn(2, 3, *small[0])], ATOL) <= ATOL
    graph = onnx.load(path).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param
    assert bool(dims[2].dim_param) == bool(dims[3].dim_param) == dynamic_hw
    # the custom ops were translated, not left as opaque nodes
    assert not [n.op_type for n in graph.node if n.domain.startswith('zoo')]
    # the model is left as it was: its fast paths back on, no backend forced
    assert 'ZOO_NA_BACKEND' not in os.environ and 'ZOO_BRA_BACKEND' not in os.environ
    fused = [m.fused_attn for m in model.modules() if isinstance(getattr(m, 'fused_attn', None), bool)]
    assert fused == [m.fused_attn for m in timm.create_model(name).modules()
                     if isinstance(getattr(m, 'fused_attn', None), bool)]


def test_static_hw_list_is_current():
    assert sorted(sum(ONNX_GROUPS, [])) == TINY
    assert all(any(n.startswith(p) for n in TINY) for p in STATIC_HW), 'a STATIC_HW entry matches no variant'
    assert all(any(n.startswith(p) for n in TINY) for p in SHRINKING_SIZE), 'a SHRINKING_SIZE entry matches none'
    assert set(TRACE_SIZE) <= set(TINY)


def test_dynamic_hw_refused_where_the_graph_specialises(tmp_path):
    ravlt = timm.create_model('ravlt_test').eval()  # at its 32 px cfg size the last stage is 1 x 1 (see TRACE_SIZE)
    with pytest.raises(ValueError, match='does not generalise'):
        export_onnx(ravlt, str(tmp_path / 'ravlt.onnx'), dynamic_hw=True, optimize=False)


def test_one_pixel_maps_named_when_the_export_fails(tmp_path):
    """At its 32 px cfg size ravlt_test's last stage is 1 x 1: torch.export specialises that, the graph takes no other
    batch, and the error says why and what to do (the export passes at 64 px: ``TRACE_SIZE``)."""
    ravlt = timm.create_model('ravlt_test').eval()
    with pytest.raises(ValueError, match=r'feature maps \[\(1, 64, 1, 1\)\] are 1 pixel .*--input-size'):
        export_onnx(ravlt, str(tmp_path / 'ravlt.onnx'), optimize=False)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(input_size=(3, 0, 32)), ValueError, r'input_size must be \(C, H, W\) with every size >= 1'),
    (dict(input_size=(4, 32, 32)), ValueError, r'input_size=\(4, 32, 32\): Nat does not run .*\[B, 3, H, W\]'),
    (dict(input_size='3 32 32'), TypeError, r'input_size must be \(C, H, W\), three ints'),
    (dict(input_size=(3, 32.0, 32)), TypeError, r'input_size must be \(C, H, W\), three ints'),
    (dict(atol=-1e-4), ValueError, r'atol must be a number >= 0, got atol=-0.0001'),
    (dict(atol=float('nan')), ValueError, r'atol must be a number >= 0, got atol=nan'),
    (dict(atol='1e-4'), TypeError, r'atol must be a number >= 0'),
    (dict(opset=0), ValueError, r'opset must be an int in \[1, \d+\] \(or None\), got opset=0'),
    (dict(opset=999), ValueError, r'opset must be an int in \[1, \d+\] \(or None\)'),
    (dict(opset=18.0), TypeError, r'opset must be an int in \[1, \d+\] \(or None\), got opset=18.0'),
])
def test_export_arguments_named_before_tracing(tmp_path, kwargs, error, match):
    """Arguments that failed deep in the exporter (an image size or channel count the model does not take), passed
    a check they should fail (a negative or NaN ``atol``) or were ignored (an ``opset`` below 1) are named first."""
    path = tmp_path / 'nat.onnx'
    with pytest.raises(error, match=match):
        export_onnx(timm.create_model('nat_test').eval(), str(path), optimize=False, **kwargs)
    assert not path.exists()


def test_opset_the_exporter_did_not_write_is_refused(tmp_path):
    """torch's dynamo exporter writes opset 18 and up; asked for less it tries to convert the graph down and, failing
    (as for this pooled GELU conv), writes 18 with a warning: that file would not be what was asked for."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    path = tmp_path / 'conv.onnx'
    with pytest.raises(ValueError, match=r'opset=17: torch.onnx wrote opset 18 instead'):
        export_onnx(model, str(path), input_size=(3, 16, 16), opset=17, optimize=False)
    assert not path.exists()
    export_onnx(model, str(path), input_size=(3, 16, 16), opset=18, optimize=False)
    assert [i.version for i in onnx.load(str(path)).opset_import if i.domain == ''] == [18]


def test_onnx_cli_names_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / 'nat.onnx')
    for args, match in [(['--input-size', '4', '32', '32'], 'input_size=(4, 32, 32)'),
                        (['--atol', '-1'], 'atol must be a number >= 0'),
                        (['--opset', '0'], 'opset must be an int in [1, ')]:
        with pytest.raises(SystemExit) as exit_info:
            weights_main(['onnx', '--model', 'nat_test', '--out', out, *args])
        assert exit_info.value.code == 2
        assert match in capsys.readouterr().err


def test_inline_per_sample_conv_substitute():
    """The export form of InLine's per-sample depthwise conv (no batch in a Conv attribute) equals the layer's."""
    from zoo.layers.inline_attention import dwconv3x3_per_sample
    from zoo.weights.onnx import _dwconv3x3_per_sample_shifts, onnx_export_mode
    x, w = torch.randn(3, 5, 7, 6, dtype=torch.float64), torch.randn(3, 6, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(_dwconv3x3_per_sample_shifts(x, w), dwconv3x3_per_sample(x, w), rtol=0, atol=1e-12)
    w2 = w.clone()
    w2[1, 2, 0, 2] += 1.  # a planted tap: only sample 1, channel 2 changes
    diff = (_dwconv3x3_per_sample_shifts(x, w2) - _dwconv3x3_per_sample_shifts(x, w)).abs().amax(dim=(1, 2))
    assert diff[1, 2] > 0 and diff.count_nonzero() == 1
    import zoo.layers.inline_attention as inline
    with onnx_export_mode(torch.nn.Identity()):
        assert inline.dwconv3x3_per_sample is _dwconv3x3_per_sample_shifts
    assert inline.dwconv3x3_per_sample is dwconv3x3_per_sample


def test_same_padding_substitute_equals_timm():
    """The integer form of timm's TensorFlow-'SAME' padding used while exporting equals timm's for every size."""
    import timm.layers.padding as padding

    from zoo.weights.onnx import _same_padding_integer, onnx_export_mode
    timm_fn = padding.get_same_padding
    for x in range(1, 70):
        for k, s, d in [(1, 1, 1), (3, 1, 1), (3, 2, 1), (2, 2, 1), (1, 2, 1), (5, 2, 2), (7, 4, 1), (1, 4, 1)]:
            assert _same_padding_integer(x, k, s, d) == timm_fn(x, k, s, d), (x, k, s, d)
    with onnx_export_mode(torch.nn.Identity()):
        assert padding.get_same_padding is _same_padding_integer
    assert padding.get_same_padding is timm_fn


def test_onnx_cli_with_weights(tmp_path, capsys):
    model = timm.create_model('nat_test', num_classes=5).eval()
    weights = tmp_path / 'w.pth'
    torch.save({'model': model.state_dict(), 'epoch': 1}, weights)
    out = tmp_path / 'nat.onnx'
    assert weights_main(['onnx', '--model', 'nat_test', '--file', str(weights), '--out', str(out),
                         '--static-hw', '--input-size', '3', '40', '48']) == 0
    assert 'dynamic batch (height and width fixed)' in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].shape[1:] == [3, 40, 48]  # traced at --input-size
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert np.abs(session.run(None, {'image': x.numpy()})[0] - model(x).numpy()).max() <= ATOL
        model.get_classifier().bias.add_(1e-3)  # a planted difference: the graph no longer equals the model
    with pytest.raises(ValueError, match='differs from PyTorch'):
        check_onnx(model, str(out), [x])
