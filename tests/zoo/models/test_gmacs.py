"""GMACs of every published zoo model against the README's model table (the official code's fvcore counts).

The README states "GMACs (official code; ours within 0.1%)" with the counts measured on the official code (the
project's paper_table.csv, ``measured`` column). :func:`zoo.models._flops.count_gmacs` counts ours the same way
(fvcore, batch 1, neighborhood and routing attention counted); the exporter's model card uses the same counter.

Every row is counted on the ``meta`` device (:class:`zoo.models._flops.ShapeOnlyCounter`: fvcore's handles on the
shapes, nothing computed), so the whole table takes seconds; fvcore's own trace runs the real forward (minutes for the
large MaxViT rows). Both counts were compared for every row once (equal); :func:`test_meta_count_equals_fvcore_trace`
keeps that comparison for a model of each kind of attention.
"""
import re
from pathlib import Path

import fvcore  # noqa: F401  (a test dependency: the counter needs it)
import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.models import input_spec
from zoo.models._flops import count_gmacs

README = Path(__file__).resolve().parents[3] / 'README.md'
# | `name` | params | GMACs | resolution | top-1 |
_ROW = re.compile(r'^\| `(\w+)` \| ([\d,]+) \| ([\d.]+) \| (\d+) \|', re.M)
TABLE = {name: (int(params.replace(',', '')), float(gmacs), int(res))
         for name, params, gmacs, res in _ROW.findall(README.read_text())}
TOLERANCE = 1e-3  # the README's "within 0.1%"


def _published_zoo_models():
    """Zoo architectures with released ImageNet-1k weights (the ImageNet-22K heads have no official count)."""
    out = set()
    for tagged in timm.list_models(pretrained=True):
        arch = tagged.split('.')[0]
        if timm.models.model_entrypoint(arch).__module__.startswith('zoo.'):
            if timm.get_pretrained_cfg(tagged).num_classes == 1000:
                out.add(arch)
    return out


def _cpu_model(name, **kwargs):
    """``name`` on the CPU with zero weights: counts depend on shapes alone, and the random init is most of the build
    time."""
    model = timm.create_model(name, device='meta', **kwargs).to_empty(device='cpu')
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model


def test_readme_table_covers_every_published_model():
    assert len(TABLE) > 20, 'README model table not found'
    assert set(TABLE) == _published_zoo_models()


@pytest.mark.parametrize('name', list(TABLE))
def test_gmacs_match_official(name):
    params, official, res = TABLE[name]
    assert input_spec(name).input_size == (3, res, res)
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == params
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')]
    gmacs = count_gmacs(model, (3, res, res))
    assert abs(gmacs / official - 1) < TOLERANCE, (name, gmacs, official)
    # attention layers run their countable (unfused) paths only while counting
    assert all(m.fused_attn == value for m, value in fused)


@pytest.mark.parametrize('name, input_size', [
    ('nat_mini', (3, 224, 224)),  # neighborhood attention (the zoo_flops::na2d placeholder), LayerNorm, convs
    ('dinat_s_test', (3, 72, 40)),  # dilated NA, padded maps
    ('vitrpb_test', (3, 64, 64)),  # global attention with the explicit matmul path
    ('biformer_stl_nchw_test', (3, 75, 61)),  # routing with the gather path, 1x1 convs, GroupNorm-free NCHW
    ('biformer_tiny', (3, 200, 136)),  # legacy routing, padding to the region grid
    ('maxvit_zoo_test', (3, 96, 96)),  # MBConv (BatchNorm, grouped convs), the einsum bias lookup, partitions
    ('litv2_test', (3, 72, 40)),  # HiLo (pooled keys, padded windows), torchvision deform_conv2d token merging
])
def test_meta_count_equals_fvcore_trace(name, input_size):
    """The meta-device count equals fvcore's trace of the real forward on the CPU, to the multiply-add."""
    cpu = count_gmacs(_cpu_model(name), input_size)
    meta = count_gmacs(timm.create_model(name, device='meta'), input_size)
    assert cpu > 0
    assert meta == cpu, (name, meta, cpu)


def test_meta_count_sees_a_changed_architecture():
    """A count that ignored a layer would still pass the equality test on one model: a wider MLP must count more."""
    base = count_gmacs(timm.create_model('nat_test', device='meta'), (3, 64, 64))
    wider = count_gmacs(timm.create_model('nat_test', device='meta', mlp_ratio=4.), (3, 64, 64))
    assert wider > base
