"""The timm contract, checked for every registered zoo model (as timm's own ``tests/test_models.py`` does).

Every model a ``zoo.models.*`` module registers is covered: a family that lands later gets every check by
registering, and must register a tiny ``*_test`` variant. Tiny variants run on CPU at small inputs: forward,
backward, gradient checkpointing, values compared (and the same model on meta and under FakeTensorMode gives the
CPU shapes). Full variants are built and run on the ``meta`` device only, where nothing is computed:
construction with ``device=`` / ``dtype=``, the pretrained cfg against the real modules, one forward at an odd
size (200x136; shapes, and every parameter reached by the autograd graph) and ``features_only`` at 512x704.

Beyond timm's suite: ``create_model(device=, dtype=)``, the cfg names resolving to real modules, ``in_chans``,
``features_only`` at 512x704 and 200x136 (tiny variants: divided by 8 and 4), every parameter receiving a
gradient, identical gradients with checkpointing, a new head fitting pruned features, and ``import zoo``
warning-free in a fresh interpreter. timm's FX, FX + TorchScript and TorchScript tests run on the tiny variants
(values against eager, at an odd size too, and a saved and loaded scripted model).
"""
import argparse
import contextlib
import copy
import functools
import inspect
import io
import math
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo, group_parameters
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import zoo  # noqa: F401  (registers the models)


def _zoo_models():
    """``{name: module}`` of the models whose timm entrypoint is defined in a ``zoo.models.*`` module."""
    out = {}
    for name in timm.list_models():
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith('zoo.models.'):
            out[name] = module
    return out


MODELS = _zoo_models()
ALL = sorted(MODELS)
TINY = [n for n in ALL if n.endswith('_test')]
FULL = [n for n in ALL if not n.endswith('_test')]
# (H, W) of a detection / segmentation input and an odd one; tiny variants run them divided by the second number
DENSE_SIZES = {'512x704': ((512, 704), 8), '200x136': ((200, 136), 4)}
TINY_MAX_PARAMS = 1_000_000

# Known gaps of the families added in session 4 (issue 10 stays open for them): their layers are not yet FX
# leaves / scriptable. xfail (not skip): the check still runs, and the report lists each one.
_FX_TS_GAP = ()


def _gap(names, prefixes, reason):
    return [pytest.param(n, marks=pytest.mark.xfail(reason=reason)) if n.startswith(prefixes) else n
            for n in names]


FX_TS_TINY = _gap(TINY, _FX_TS_GAP, 'layers of this family are not FX leaves / scriptable yet')
META_DTYPE = torch.bfloat16


def _cfg(name: str) -> dict:
    return timm.models.get_pretrained_cfg(name).to_dict()


def _fixed_size_kwargs(name: str, size) -> dict:
    """Models with a fixed input size (absolute position tables) are built for the size they are fed."""
    return dict(img_size=tuple(size)) if _cfg(name).get('fixed_input_size') else {}


@functools.lru_cache(maxsize=None)
def _meta_model(name: str) -> torch.nn.Module:
    """The model built on the meta device in ``META_DTYPE``, shared by the checks that do not change it."""
    return timm.create_model(name, device='meta', dtype=META_DTYPE).eval()


def _image(name: str, batch: int = 2, size=None, device='cpu', dtype=torch.float32) -> torch.Tensor:
    size = size or _cfg(name)['input_size'][1:]
    return torch.randn(batch, 3, *size, device=device, dtype=dtype)


def _as_map(model: torch.nn.Module, feats: torch.Tensor, grid) -> torch.Tensor:
    """``forward_features`` output (laid out as ``model.output_fmt``) as an NCHW map. NLC tokens (timm's ViT layout:
    ``num_prefix_tokens`` class tokens, then the patch tokens row-major) must be exactly the prefix plus a ``grid``
    of patch tokens; maps are only permuted (``grid`` unused)."""
    fmt = getattr(model, 'output_fmt', 'NCHW')
    if fmt == 'NLC':
        prefix = model.num_prefix_tokens
        assert feats.shape[1] == prefix + math.prod(grid), (tuple(feats.shape), prefix, tuple(grid))
        return feats[:, prefix:].transpose(1, 2).reshape(feats.shape[0], feats.shape[2], *grid)
    assert fmt in ('NCHW', 'NHWC'), fmt
    return feats.permute(0, 3, 1, 2) if fmt == 'NHWC' else feats


def _check_reduced(size, reduction: int, out_size) -> None:
    """A stride-``reduction`` map of a ``size`` input has floor or ceil of ``size / reduction`` positions."""
    for s, o in zip(size, out_size):
        assert o in (s // reduction, math.ceil(s / reduction)), (tuple(size), reduction, tuple(out_size))


def _check_intermediates(model, x, inter) -> None:
    info = FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    assert len(inter) == len(info)
    for f, chans, reduction in zip(inter, info.channels(), info.reduction()):
        assert f.shape[:2] == (x.shape[0], chans) and f.dtype == x.dtype
        _check_reduced(x.shape[2:], reduction, f.shape[2:])


def _reached_parameters(*outputs: torch.Tensor) -> set:
    """ids of the leaf tensors the autograd graph of ``outputs`` reaches (those a backward would give a grad)."""
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen, leaves = set(), set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, 'variable'):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def test_every_family_registers_a_tiny_variant():
    families = {}
    for name, module in MODELS.items():
        families.setdefault(module, []).append(name)
    assert {'zoo.models.nat', 'zoo.models.biformer'} <= set(families)
    for module, names in families.items():
        assert any(n.endswith('_test') for n in names), f'{module} registers no *_test variant for the contract'


def test_import_zoo_raises_no_warning():
    # timm warns when a name is registered twice: a zoo name shadowing a timm one fails here
    result = subprocess.run(
        [sys.executable, '-W', 'error', '-c', 'import zoo, timm; assert timm.is_model("nat_test")'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('name', ALL)
def test_pretrained_cfg_and_interface(name):
    cfg = _cfg(name)
    model = _meta_model(name)
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.is_meta for t in tensors), 'create_model(device=) left tensors elsewhere'
    assert all(t.dtype == META_DTYPE for t in tensors if t.is_floating_point()), 'create_model(dtype=) not applied'
    assert model.pretrained_cfg == cfg and model.default_cfg == cfg
    in_chans, *size = cfg['input_size']
    assert model.in_chans == in_chans == 3 and len(size) == 2 and min(size) > 0
    assert len(cfg['pool_size']) == 2 and min(cfg['pool_size']) > 0
    assert len(cfg['mean']) == len(cfg['std']) == in_chans and min(cfg['std']) > 0
    assert 0 < cfg['crop_pct'] <= 1 and cfg['interpolation'] in ('bilinear', 'bicubic', 'nearest')
    assert cfg['num_classes'] == model.num_classes > 0 and cfg.get('license')
    assert model.num_features > 0 and model.head_hidden_size > 0
    # the names timm's loaders use resolve to the real modules, with the shapes they adapt
    first_conv = cfg['first_conv'] if isinstance(cfg['first_conv'], (tuple, list)) else (cfg['first_conv'],)
    for conv in first_conv:
        assert model.get_submodule(conv).weight.shape[1] == in_chans, conv
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert model.get_classifier().weight.shape == (model.num_classes, model.head_hidden_size)
    # what the optimizer factory relies on
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for g in groups.values() for n in g) == sorted(names) and len(groups) > 1
    assert set(model.no_weight_decay()) <= set(names)
    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_a_model_arg=1)


@pytest.mark.parametrize('name', ALL)
def test_reset_classifier_keeps_device_dtype_and_frozen(name):
    model = copy.deepcopy(_meta_model(name)).to(dtype=torch.float64)
    # a new classifier is made on the model's device and dtype, also from a headless state
    for args in ((0,), (2,), (0, ''), (2, 'avg')):
        model.reset_classifier(*args)
        if args[0]:
            classifier = list(model.get_classifier().parameters())
            assert classifier and all(p.is_meta and p.dtype == torch.float64 for p in classifier), args
    assert not any(m.training for m in model.modules())
    model.requires_grad_(False)
    model.reset_classifier(0)
    model.reset_classifier(0, '')
    assert not [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize('name', FULL)
def test_full_variant_on_meta(name):
    cfg = _cfg(name)
    model = _meta_model(name)
    # the cfg's pool size is its input size over the final reduction (exact: cfg sizes are multiples of it)
    reduction = model.feature_info[-1]['reduction']
    assert [s / reduction for s in cfg['input_size'][1:]] == list(cfg['pool_size'])
    # one forward at the odd size (the cfg size for a fixed-size model): the feature info and the head against the
    # real shapes, every parameter in the autograd graph
    size = cfg['input_size'][1:] if cfg.get('fixed_input_size') else DENSE_SIZES['200x136'][0]
    x = _image(name, size=size, device='meta', dtype=META_DTYPE)
    final, inter = model.forward_intermediates(x)
    _check_intermediates(model, x, inter)
    final_map = _as_map(model, final, inter[-1].shape[2:])
    assert final_map.shape[1] == model.num_features
    _check_reduced(size, reduction, final_map.shape[2:])
    pre = model.forward_head(final, pre_logits=True)
    logits = model.forward_head(final)
    assert pre.shape == (2, model.head_hidden_size) and logits.shape == (2, model.num_classes)
    assert logits.dtype == META_DTYPE
    reached = _reached_parameters(logits, *inter)
    assert not [n for n, p in model.named_parameters() if id(p) not in reached], 'parameters without a gradient'


@pytest.mark.parametrize('name', FULL)
def test_full_variant_features_only(name):
    # the odd size runs through forward_intermediates above; features_only at the detection size here
    size = DENSE_SIZES['512x704'][0]
    model = timm.create_model(
        name, features_only=True, device='meta', dtype=META_DTYPE, **_fixed_size_kwargs(name, size))
    info = model.feature_info
    feats = model(_image(name, batch=1, size=size, device='meta', dtype=META_DTYPE))
    assert len(feats) == len(info.out_indices) >= 3
    for f, chans, reduction in zip(feats, info.channels(), info.reduction()):
        assert f.shape[:2] == (1, chans)
        _check_reduced(size, reduction, f.shape[2:])


@pytest.mark.parametrize('name', TINY)
def test_tiny_forward_backward(name):
    model = timm.create_model(name, num_classes=7).train()
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) < TINY_MAX_PARAMS
    out = model(_image(name))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert not [n for n, p in params.items() if p.grad is None], 'parameters without a gradient'
    assert not [n for n, p in params.items() if not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize('name', TINY)
def test_tiny_meta_and_fake_match_cpu(name):
    x = _image(name)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        expected = [model(x), *model.forward_intermediates(x)[1]]
        meta = _meta_model(name)
        x_meta = x.to('meta', META_DTYPE)
        for a, b in zip(expected, [meta(x_meta), *meta.forward_intermediates(x_meta)[1]]):
            assert b.is_meta and b.shape == a.shape and b.dtype == META_DTYPE
        # fake inputs through the real model, as shape propagation and memory estimators run it
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            x_fake = mode.from_tensor(x)
            out = [model(x_fake), *model.forward_intermediates(x_fake)[1]]
        for a, b in zip(expected, out):
            assert isinstance(b, FakeTensor) and b.shape == a.shape and b.dtype == a.dtype
        # nothing fake left behind in a cache
        torch.testing.assert_close(model(x), expected[0])


@pytest.mark.parametrize('name', TINY)
def test_tiny_dtypes(name):
    model = timm.create_model(name).eval()
    x = _image(name)
    with torch.no_grad():
        ref = model(x)
        # another dtype after a first forward: no stale cache
        model.to(torch.float64)
        out = model(x.double())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out.float(), ref, atol=1e-4, rtol=1e-3)
        model = timm.create_model(name, device='cpu', dtype=torch.bfloat16).eval()
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        out = model(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


class _HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's values on the host (``.item()``, ``int(t)``, ``nonzero``, ...)."""

    READS = ('aten._local_scalar_dense', 'aten.nonzero', 'aten.is_nonzero', 'aten.equal')

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.READS):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('name', TINY)
def test_tiny_training_step_reads_nothing_on_the_host(name):
    """No op of a forward and backward reads values back to the host: on a GPU each such read waits for the device
    (BiFormer's routing-index range check did, in every block)."""
    model = timm.create_model(name, num_classes=7).train()
    x = _image(name)
    with _HostReads() as mode:
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    assert mode.reads == []


def _relative_error(ref: torch.Tensor, out: torch.Tensor, floor: float = 1e-30) -> float:
    """``|out - ref| / max(|ref|, floor)`` in float64, on the CPU."""
    ref = ref.double().cpu()
    return ((out.double().cpu() - ref).norm() / ref.norm().clamp_min(floor)).item()


@contextlib.contextmanager
def _no_tf32():
    """Full fp32 matmuls and convolutions on CUDA (cuDNN allows TF32 in convolutions by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', TINY)
def test_tiny_on_cuda_matches_cpu(name):
    """On a GPU (through the Triton kernels where the model uses them) a model computes what it computes on the
    CPU: fp32 logits and every parameter's gradient; under bf16 autocast a finite forward and backward whose logits
    stay close to fp32's."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7).eval()  # eval: no dropout / drop-path randomness
    model_cuda = copy.deepcopy(model).cuda()
    x = _image(name)
    target = torch.tensor([1, 2])
    logits = model(x)
    F.cross_entropy(logits, target).backward()
    with _no_tf32():
        logits_cuda = model_cuda(x.cuda())
        F.cross_entropy(logits_cuda, target.cuda()).backward()
    assert _relative_error(logits, logits_cuda) < 1e-4
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # relative to each gradient, floored at 1e-4 of the largest: some gradients are exactly zero in exact arithmetic
    # (LITv2's Lo-Fi query where the pooled map is one token: a softmax over one key) and are fp32 noise on both
    # devices (on an H200: 5e-8 against 7e-9 on the CPU, the largest gradient 6.9)
    floor = 1e-4 * max(g.double().norm().item() for g in grads.values())
    errors = {n: _relative_error(grads[n], p.grad, floor) for n, p in model_cuda.named_parameters() if n in grads}
    assert errors and max(errors.values()) < 1e-3, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    model_cuda.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        logits_bf16 = model_cuda(x.cuda())
    F.cross_entropy(logits_bf16.float(), target.cuda()).backward()
    assert torch.isfinite(logits_bf16).all()
    assert all(torch.isfinite(p.grad).all() for p in model_cuda.parameters() if p.grad is not None)
    assert _relative_error(logits, logits_bf16) < 0.1


@pytest.mark.parametrize('name', TINY)
def test_tiny_classifier(name):
    model = timm.create_model(name).eval()
    x = _image(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        pool_size = _cfg(name)['pool_size']
        assert _as_map(model, feats, pool_size).shape[1:] == (model.num_features, *pool_size)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        logits = model(x)
        assert logits.shape == (2, model.num_classes)
        torch.testing.assert_close(model.forward_head(feats), logits)

        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, '')
        torch.testing.assert_close(model(x), feats)
        model.reset_classifier(5, 'avg')
        assert model(x).shape == (2, 5)
        model.reset_classifier(3)
        assert model.global_pool == 'avg' and model(x).shape == (2, 3)

        bare = timm.create_model(name, num_classes=0).eval()
        assert bare(x).shape == pre.shape and bare.num_classes == 0
        bare = timm.create_model(name, num_classes=0, global_pool='').eval()
        assert bare(x).shape == feats.shape
        one = timm.create_model(name, in_chans=1).eval()
        assert one.in_chans == 1 and one(x[:, :1]).shape == logits.shape


@pytest.mark.parametrize('name', TINY)
def test_tiny_forward_intermediates(name):
    model = timm.create_model(name).eval()
    x = _image(name)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        _check_intermediates(model, x, inter)
        only = model.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(only, inter):
            torch.testing.assert_close(a, b)
        # the normed last intermediate is the final feature map
        nhwc = model.forward_intermediates(x, indices=1, norm=True, output_fmt='NHWC', intermediates_only=True)
        final_nhwc = _as_map(model, final, inter[-1].shape[2:]).permute(0, 2, 3, 1)
        assert len(nhwc) == 1
        torch.testing.assert_close(nhwc[0], final_nhwc)
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        for a, b in zip(early, inter[:2]):
            torch.testing.assert_close(a, b)
    # maps of a hierarchical model have no token layout; no model has a channels-second token layout
    for bad in ('NCL',) if getattr(model, 'output_fmt', 'NCHW') == 'NLC' else ('NLC', 'NCL'):
        with pytest.raises(ValueError, match='output_fmt'):
            model.forward_intermediates(x, output_fmt=bad)


def _bad_images(name: str):
    """``(description, input, error type, message pattern)`` for inputs a model must refuse by name."""
    x = _image(name, batch=1)
    size = tuple(x.shape[2:])
    return [
        ('an array', x.numpy(), TypeError, r'x must be a torch\.Tensor'),
        ('one image without a batch dim', x[0], ValueError, r'x must have shape \[B, 3, H, W\].*\(3, '),
        ('4 channels for in_chans=3', torch.randn(1, 4, *size), ValueError, r'\[B, 3, H, W\].*\(1, 4, '),
        ('an empty batch', x[:0], ValueError, 'at least one image'),
        ('no rows', x[:, :, :0], ValueError, 'at least one image'),
        ('uint8 pixels', x.to(torch.uint8), TypeError, 'floating-point.*torch.uint8'),
        ('float64 for float32 parameters', x.double(), TypeError, r"dtype of the parameters \(torch\.float32"),
        ('float16 without autocast', x.half(), TypeError, 'got dtype torch.float16'),
        ('another device', x.to('meta'), ValueError, r"device of the model's parameters \(cpu\).*meta"),
    ]


def _variant_cfg(name: str):
    """The architecture dataclass the variant is built from (``model_cfgs`` of its module)."""
    import dataclasses
    import importlib
    cfg = importlib.import_module(MODELS[name]).model_cfgs[name]
    assert dataclasses.is_dataclass(cfg)
    return cfg


@pytest.mark.parametrize('name', TINY)
def test_tiny_cfg_fields_are_type_checked_by_name(name):
    """Every architecture field, overridden by keyword with a value of no type it takes (bytes), is a ``TypeError``
    naming the field and the expected type; a float field given infinity a ``ValueError`` (before: ranges compared
    bytes to ints, 1.5 reached ``torch.topk`` / ``avg_pool2d``, a string eps ``layer_norm``, an infinite ``mlp_ratio``
    an ``OverflowError`` and an infinite layer scale NaN outputs)."""
    import dataclasses
    import typing
    cfg = _variant_cfg(name)
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        with pytest.raises(TypeError, match=rf"^{field.name} must be .*, got {field.name}=b'bad'$"):
            timm.create_model(name, **{field.name: b'bad'})
        hint = hints[field.name]
        if hint is float or (typing.get_origin(hint) is typing.Union and float in typing.get_args(hint)):
            with pytest.raises(ValueError, match=rf'^{field.name} must be finite, got {field.name}=inf$'):
                timm.create_model(name, **{field.name: float('inf')})


@pytest.mark.parametrize('name', TINY)
def test_tiny_bool_arguments_are_type_checked_by_name(name):
    """Every bool keyword of the model's constructors (those outside its config: ``qkv_bias``,
    ``dynamic_img_size``) given a string is a ``TypeError`` naming it: ``qkv_bias='False'`` built the biases."""
    import typing
    cls = type(timm.create_model(name))
    names = sorted({arg for c in cls.__mro__ if '__init__' in vars(c) and c.__module__.startswith('zoo.')
                    for arg, hint in typing.get_type_hints(c.__init__).items() if hint is bool})
    for arg in names:
        with pytest.raises(TypeError, match=rf"^{arg} must be a bool, got {arg}='False'$"):
            timm.create_model(name, **{arg: 'False'})


@pytest.mark.parametrize('name', TINY)
def test_tiny_rejects_bad_images_by_name(name):
    """Images of the wrong type, shape, size, dtype or device get a TypeError / ValueError naming ``x`` and what was
    expected, from every entry point (not an error from deep in a layer); bad arguments of the feature and classifier
    interface get a ValueError naming the argument (not timm's ``assert``)."""
    model = timm.create_model(name).eval()
    entry_points = {
        'forward': model,
        'forward_features': model.forward_features,
        'forward_intermediates': model.forward_intermediates,
    }
    with torch.no_grad():
        for what, x, error, pattern in _bad_images(name):
            for entry, fn in entry_points.items():
                with pytest.raises(error, match=pattern):
                    fn(x)
                    pytest.fail(f'{entry} took {what}')
        # autocast casts float16 / float32 images for a float32 model
        with torch.autocast('cpu', torch.bfloat16):
            assert torch.isfinite(model(_image(name, dtype=torch.float16))).all()
        feats = model.forward_features(_image(name))
        channels_last = getattr(model, 'output_fmt', 'NCHW') != 'NCHW'
        for bad in (feats.flatten(1), feats[..., :1] if channels_last else feats[:, :1]):
            with pytest.raises(ValueError, match=r'x must be the features \[B, .* that forward_features returns'):
                model.forward_head(bad)
        n = len(model.feature_info)
        for indices in (0, n + 1, [n], [-n - 1], []):
            with pytest.raises(ValueError, match='indices'):
                model.forward_intermediates(_image(name), indices=indices)
    with pytest.raises(ValueError, match='indices'):
        timm.create_model(name, features_only=True, out_indices=(n,))
    with pytest.raises(ValueError, match='num_classes'):
        model.reset_classifier(-1)
    for bad in ('10', 10.0):  # compared with 0, or reached torch.empty
        with pytest.raises(TypeError, match=r'^num_classes must be an int >= 0, got num_classes='):
            model.reset_classifier(bad)
    with pytest.raises(TypeError, match=r'^indices must be an int \(the last n features\)'):
        model.forward_intermediates(_image(name), indices='1')
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(3, 'bogus')
    with pytest.raises(ValueError, match='global_pool'):
        timm.create_model(name, global_pool='bogus')
    with pytest.raises(ValueError, match=rf'pretrained=True: {name} has no released weights'):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('name', TINY)
def test_tiny_checkpoint_filter_names_every_ill_shaped_key(name):
    """The family's ``checkpoint_filter_fn`` (also what timm's generic loader and ``zoo.weights convert`` call) refuses
    a checkpoint with any one key of another shape (native layout; a rank or a size off) by a ``ValueError`` naming
    the key, and does not crash first (its position-embedding resampling included); only the first conv and the
    classifier are left to the loaders, which adapt them."""
    model = timm.create_model(name)
    filter_fn = type(model)._checkpoint_filter()
    weights = model.state_dict()
    cfg = model.pretrained_cfg
    adapted = (cfg['first_conv'] + '.weight', cfg['classifier'] + '.')
    assert filter_fn(weights, model).keys() == weights.keys()
    for key, value in weights.items():
        if key.startswith(adapted):
            continue
        for bad in (value.flatten()[:1], value.new_zeros(*value.shape, 2)):
            with pytest.raises(ValueError, match=rf"shape mismatches \[{key.replace('.', r'[.]')}: "):
                filter_fn({**weights, key: bad}, model)


def _training_checkpoint(path, weights: dict, name: str) -> None:
    """Save ``weights`` as the official training scripts do: under ``model``, beside an EMA, optimizer state,
    ``argparse`` args and numpy scalars (what ``torch.load(weights_only=True)`` alone refuses)."""
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    torch.save({'model': weights, 'model_ema': ema, 'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3}]},
                'args': argparse.Namespace(model=name, lr=1e-3), 'epoch': 299, 'max_accuracy': np.float64(83.2)},
               path)


@pytest.mark.parametrize('name', TINY)
def test_tiny_pretrained_file_loads_model_weights_and_refuses_bad_files(name, tmp_path):
    """``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)`` goes through the zoo's loader: a training
    checkpoint loads its ``model`` weights (not the EMA), a new ``num_classes`` re-initialises the classifier and a
    new ``in_chans`` adapts the first conv (timm's rules), and a truncated file or weights that do not fit (the first
    conv and the classifier included) raise a ``ValueError`` naming the file and the keys."""
    torch.manual_seed(0)
    weights = timm.create_model(name).state_dict()
    cfg = timm.create_model(name, device='meta').pretrained_cfg
    first, classifier = cfg['first_conv'] + '.weight', cfg['classifier'] + '.weight'
    path = tmp_path / 'official.pth'

    def load(**kwargs):
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)

    _training_checkpoint(path, weights, name)
    loaded = load().state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    loaded = load(num_classes=5, in_chans=1).state_dict()
    assert loaded[classifier].shape[0] == 5
    torch.testing.assert_close(loaded[first], weights[first].sum(dim=1, keepdim=True))
    assert all(torch.equal(loaded[k], v) for k, v in weights.items() if not k.startswith((first, cfg['classifier'])))

    for key, bad in ((first, weights[first][:-1]), (classifier, weights[classifier][:, :-1]),
                     (sorted(weights)[len(weights) // 2], torch.zeros(1))):
        _training_checkpoint(path, {**weights, key: bad}, name)
        with pytest.raises(ValueError, match=rf"official\.pth.*shape mismatches \[{key.replace('.', r'[.]')}: "):
            load()
    _training_checkpoint(path, {k: v for k, v in weights.items() if k != classifier}, name)
    with pytest.raises(ValueError, match=rf"missing keys \[{classifier.replace('.', r'[.]')}\]"):
        load()
    _training_checkpoint(path, weights, name)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"official\.pth.*not a readable checkpoint"):
        load()


@pytest.mark.parametrize('name', TINY)
def test_tiny_trains_after_inference_mode(name):
    """A forward under ``torch.inference_mode`` (Lightning's validation loop, timm's validate) leaves nothing in a
    layer cache that a later training step, or an input gradient of the frozen model (saliency), cannot use."""
    model = timm.create_model(name).eval()
    x = _image(name)
    with torch.inference_mode():
        model(x)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval().requires_grad_(False)
    with torch.inference_mode():
        expected = model(x)  # after the step's batch-norm statistics
    x.requires_grad_(True)
    out = model(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('name', TINY)
def test_tiny_grad_checkpointing_same_gradients(name):
    model = timm.create_model(name).train()
    x = _image(name)
    model(x).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        expected_final, expected_inter = model.forward_intermediates(x)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-5, rtol=1e-4, msg=n)
    final, inter = model.forward_intermediates(x)
    for a, b in zip([final, *inter], [expected_final, *expected_inter]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def _check_per_sample_gradients(name: str, device: str) -> None:
    """``torch.func.vmap(grad(...))`` over the samples of a batch (per-sample gradients: DP-SGD, influence functions)
    runs and equals autograd on each sample alone."""
    from torch.func import functional_call, grad, vmap
    torch.manual_seed(0)
    model = timm.create_model(name).to(device).eval()  # eval: batch norm on running statistics, samples independent
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = _image(name, device=device)

    def loss(p, sample):
        return functional_call(model, p, (sample.unsqueeze(0),)).logsumexp(-1).sum()

    with _no_tf32():
        per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
        for i in range(x.shape[0]):
            model.zero_grad()
            model(x[i:i + 1]).logsumexp(-1).sum().backward()
            # one tolerance from the largest gradient: some are exactly zero in exact arithmetic (attention over one
            # key)
            atol = 1e-5 * max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
            for n, p in model.named_parameters():
                expected = p.grad if p.grad is not None else torch.zeros_like(p)
                torch.testing.assert_close(per_sample[n][i], expected, atol=atol, rtol=1e-4, msg=n)


@pytest.mark.parametrize('name', TINY)
def test_tiny_per_sample_gradients(name):
    _check_per_sample_gradients(name, 'cpu')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', TINY)
def test_tiny_per_sample_gradients_on_cuda(name):
    """As on the CPU; the kernels take their torch backend under the transforms (Triton's ops have no vmap rule)."""
    _check_per_sample_gradients(name, 'cuda')


@pytest.mark.parametrize('which', list(DENSE_SIZES))
@pytest.mark.parametrize('name', TINY)
def test_tiny_features_only(name, which):
    size, scale = DENSE_SIZES[which]
    size = tuple(s // scale for s in size)
    kwargs = _fixed_size_kwargs(name, size)
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    info = timm.create_model(name, device='meta', **kwargs).feature_info
    taken = [info[i] for i in model.feature_info.out_indices]
    assert len(taken) >= 3
    assert model.feature_info.channels() == [i['num_chs'] for i in taken]
    assert model.feature_info.reduction() == [i['reduction'] for i in taken]
    x = _image(name, batch=1, size=size)
    with torch.no_grad():
        feats = model(x)
    assert len(feats) == len(taken)
    for f, i in zip(feats, taken):
        assert f.shape[:2] == (1, i['num_chs']) and torch.isfinite(f).all()
        _check_reduced(size, i['reduction'], f.shape[2:])
    last = len(info) - 1
    picked = timm.create_model(name, features_only=True, out_indices=(0, last), **kwargs).eval()
    assert picked.feature_info.channels() == [info[0]['num_chs'], info[last]['num_chs']]
    with torch.no_grad():
        assert [f.shape[1] for f in picked(x)] == picked.feature_info.channels()


@pytest.mark.parametrize('name', TINY)
def test_tiny_prune_intermediate_layers(name):
    model = timm.create_model(name).eval()
    last = len(model.feature_info) - 1
    x = _image(name)
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        keep_head = copy.deepcopy(model)
        keep_head.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(keep_head(x), expected)
    for i in range(last + 1):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i])
            assert pruned.num_classes == 0
            tap = pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0]
            torch.testing.assert_close(tap, taps[i])
            # a new head fits the pruned features
            pruned.reset_classifier(4, 'avg')
            assert pruned(x).shape == (2, 4)
            # without the norm (as features_only), the features end at the tap
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i], prune_norm=True)
            if i < last:
                feats = _as_map(pruned, pruned.forward_features(x), taps[i].shape[2:])
                torch.testing.assert_close(feats, taps[i])
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
        sum(f.sum() for f in selected + [pruned(x)]).backward()
        unused = [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f'pruned to {i}, unused parameters: {unused}'


def _fx_graph_module(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` symbolically traced as timm's suite traces it (timm's notrace leaf modules and functions), returning
    the output of ``forward`` in train and in eval mode."""
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(
        model, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:], tracer_kwargs=kwargs)


def _only(outputs: dict) -> torch.Tensor:
    (out,) = outputs.values()
    return out


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.parametrize('name', FX_TS_TINY)
def test_tiny_fx_trace(name):
    """torch.fx symbolic tracing (timm's FX tests, ``feature_cls='fx'``): layers whose forward branches on shapes are
    registered notrace leaves / functions. The graph gives the eager logits at the cfg size and at an odd size it was
    not traced at, trains every parameter, and scripts (timm's FX + TorchScript test)."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, num_classes=7).eval()
    fx_model = _fx_graph_module(model).eval()
    odd = None if _cfg(name).get('fixed_input_size') else [max(8, s // 4) for s in DENSE_SIZES['200x136'][0]]
    scripted = torch.jit.script(fx_model)
    with torch.no_grad():
        for x in (_image(name), _image(name, size=odd)):
            expected = model(x)
            torch.testing.assert_close(_only(fx_model(x)), expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(_only(scripted(x)), expected, rtol=1e-4, atol=1e-5)
    fx_model.train()
    out = _only(fx_model(_image(name)))
    assert out.shape == (2, 7)
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    params = dict(fx_model.named_parameters())
    assert len(params) == len(list(model.parameters()))
    assert not [n for n, p in params.items() if p.grad is None], 'parameters without a gradient through the FX graph'


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.parametrize('name', FX_TS_TINY)
def test_tiny_torchscript(name):
    """``torch.jit.script`` under timm's ``set_scriptable`` (timm's TorchScript test), and the saved module loads and
    gives the eager logits. Scripted layers call the kernels' dispatcher ops (``torch.ops.zoo.*``), whose kernels are
    Python: a scripted model runs where ``zoo`` is imported."""
    with timm.set_scriptable(True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        x = _image(name)
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
