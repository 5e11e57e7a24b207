"""The timm contract, continued: every tiny zoo model is captured by ``torch.compile`` in one graph.

A file of its own so that the README's ``pytest -n 2 --dist loadfile`` runs it beside ``test_contract.py`` (the
longest file), not after it.
"""
import pytest
import timm
import torch
import torch._dynamo
from test_contract import TINY, _image


@pytest.mark.parametrize('name', TINY)
def test_tiny_compiles_in_one_graph(name):
    """``torch.compile(fullgraph=True)`` captures the training forward in one graph (a graph break would fall back to
    eager between pieces, silently slower) and gives the eager values and gradients. Dynamo's capture only
    (``backend='eager'``): inductor's code generation is the GPU benchmark's business."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model(name).train()
    x = _image(name)
    torch.manual_seed(1)
    expected = model(x)
    expected.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)
    out = torch.compile(model, fullgraph=True, backend='eager')(x)
    out.sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    # one tolerance from the largest gradient: a conv bias before a training-mode batch norm has a zero gradient in
    # exact arithmetic, rounding noise in each run
    atol = 1e-5 * max(g.abs().max().item() for g in expected_grads.values())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[n], atol=atol, rtol=1e-4, msg=n)
