"""ONNX export of the other half of the tiny variants: the checks are :func:`test_onnx.check_variant_export`
(see ``test_onnx.py``), split over two files so that pytest-xdist's ``--dist loadfile`` runs the exports on both
workers."""
import pytest
from test_onnx import TINY_THERE, check_variant_export


@pytest.mark.parametrize('name', TINY_THERE)
def test_onnx_matches_pytorch(tmp_path, name):
    check_variant_export(tmp_path, name)
