"""GMACs of every published zoo model against the README's model table (the official code's fvcore counts).

The README states "GMACs (official code; ours within 0.1%)" with the counts measured on the official code (the
project's paper_table.csv, ``measured`` column). :func:`zoo.models._flops.count_gmacs` counts ours the same way
(fvcore, batch 1, neighborhood and routing attention counted); the exporter's model card uses the same counter.

fvcore runs the real forward while it traces, so a row costs time in proportion to its GMACs. Rows above
``LIMIT_GMACS`` run with ``ZOO_EXTENDED_TESTS=1`` only: DiNAT-L and DiNAT_s-L at 384 px (5-7 s each) and MaxViT from
large_224, small_512 and base_384 up (7-40 s each), about two thirds of the time of the whole table.
"""
import os
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
LIMIT_GMACS = 40.0
EXTENDED = os.environ.get('ZOO_EXTENDED_TESTS', '0') == '1'


def _published_zoo_models():
    """Zoo architectures with released ImageNet-1k weights (the ImageNet-22K heads have no official count)."""
    out = set()
    for tagged in timm.list_models(pretrained=True):
        arch = tagged.split('.')[0]
        if timm.models.model_entrypoint(arch).__module__.startswith('zoo.'):
            if timm.get_pretrained_cfg(tagged).num_classes == 1000:
                out.add(arch)
    return out


def _shape_only_model(name):
    """``name`` with zero weights: counts depend on shapes alone, and the random init is most of the build time."""
    model = timm.create_model(name, device='meta').to_empty(device='cpu')
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
    if official > LIMIT_GMACS and not EXTENDED:
        pytest.skip(f'{official} GMACs > {LIMIT_GMACS}: counted with ZOO_EXTENDED_TESTS=1')
    assert input_spec(name).input_size == (3, res, res)
    model = _shape_only_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')]
    gmacs = count_gmacs(model, (3, res, res))
    assert abs(gmacs / official - 1) < TOLERANCE, (name, gmacs, official)
    # attention layers run their countable (unfused) paths only while counting
    assert all(m.fused_attn == value for m, value in fused)
