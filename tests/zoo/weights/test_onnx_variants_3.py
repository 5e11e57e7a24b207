"""ONNX export of group 3 of the tiny variants: the checks are :func:`test_onnx.check_variant_export` (see
``test_onnx.py``), split over four files so that pytest-xdist's ``--dist loadfile`` spreads the exports over both
workers."""
import pytest
from test_onnx import ONNX_GROUPS, check_variant_export


@pytest.mark.parametrize('name', ONNX_GROUPS[3])
def test_onnx_matches_pytorch(tmp_path, name):
    check_variant_export(tmp_path, name)
