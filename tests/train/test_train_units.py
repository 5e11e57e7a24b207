"""Unit tests of the training pieces: data modules, sampler, seeding, collate, lr rule, model-name check."""
import math
import random

import numpy as np
import pytest
import torch

from zoo.train.data import DigitsDataModule, ImageFolderDataModule, collate_skipping
from zoo.train.errors import ConfigError
from zoo.train.module import ClassifierModule, check_model_name, resolve_lr
from zoo.train.sampling import ResumableSampler, SeededDataset, mix_seed

# data

def test_digits_module_split_shapes_and_normalisation():
    dm = DigitsDataModule(img_size=32, batch_size=64)
    dm.setup('fit')
    assert (len(dm._train), len(dm._val)) == (1437, 360)
    assert dm.num_classes == 10 and dm.label_names == [str(i) for i in range(10)]
    assert dm.data_config['input_size'] == [3, 32, 32]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(x[:, 0], x[:, 1])
    # the split does not depend on the training seed
    other = DigitsDataModule(img_size=32)
    other.setup('fit')
    assert torch.equal(other._val.labels, dm._val.labels)
    # augmented training batches: drop_last keeps every batch full (even, for Mixup)
    loader = dm.train_dataloader()
    assert len(loader) == 1437 // 64
    assert all(b[0].shape[0] == 64 for b in loader)


@pytest.mark.parametrize('kwargs, match', [
    (dict(img_size=4), r'img_size must be an int >= 8, got img_size=4\.'),
    (dict(img_size=32.5), r'img_size must be an int >= 8'),
    (dict(val_fraction=1.5), r'val_fraction must be a number in \(0, 1\)'),
    (dict(batch_size=0), r'batch_size must be an int >= 1'),
    (dict(split_seed=-1), r'split_seed must be an int in \[0, 4294967295\]'),
    (dict(max_shift=2.0), r'max_shift must be a number in \[0, 0.5\], got max_shift=2.0'),  # was blank images
    (dict(max_shift=-0.5), r'max_shift must be a number in \[0, 0.5\]'),  # was a RuntimeError at the first batch
    (dict(num_workers=-1), r'num_workers must be an int >= 0'),
])
def test_digits_module_arguments_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DigitsDataModule(**kwargs)


# each was taken silently by timm's transforms (and trained on something else than asked) or failed at the first
# batch with a KeyError / AssertionError / RuntimeError that did not name the argument
def test_batch_larger_than_the_training_set_is_named():
    """drop_last with a batch above the images of a device left no training batch: Lightning skipped training."""
    dm = DigitsDataModule(batch_size=2000)
    dm.setup('fit')
    with pytest.raises(ConfigError, match=r'batch_size=2000 is larger than the 1437 training images of each device'):
        dm.train_dataloader()


@pytest.mark.parametrize('kwargs, match', [
    (dict(img_size=0), r'img_size must be an int >= 1'),
    (dict(batch_size=0), r'batch_size must be an int >= 1'),
    (dict(eval_batch_size=0), r'eval_batch_size must be an int >= 1 \(or null\)'),
    (dict(num_workers=-2), r'num_workers must be an int >= 0'),
    (dict(interpolation='cubic'), r"interpolation must be one of \[.*'bicubic'.*\], got interpolation='cubic'"),
    (dict(train_interpolation='any'), r"train_interpolation must be one of \[.*'random'\]"),
    (dict(mean=(0.5, 0.5)), r'mean must be a list of 3 numbers'),
    (dict(std=(0.2, 0.0, 0.2)), r'std\[1\] must be a number > 0, got std\[1\]=0.0'),
    (dict(crop_pct=0.0), r'crop_pct must be a number in \(0, 1\]'),
    (dict(crop_pct=1.5), r'crop_pct must be a number in \(0, 1\]'),
    (dict(crop_mode='centre'), r"crop_mode must be one of \['border', 'center', 'squash'\]"),
    (dict(scale=(1.0, 0.08)), r'scale must be in increasing order'),
    (dict(scale=(0.0, 1.0)), r'scale\[0\] must be a number in \(0, 1\]'),
    (dict(scale=(0.5,)), r'scale must be a list of 2 numbers'),
    (dict(ratio=(4 / 3, 3 / 4)), r'ratio must be in increasing order'),
    (dict(hflip=1.5), r'hflip must be a number in \[0, 1\]'),
    (dict(vflip=-0.1), r'vflip must be a number in \[0, 1\]'),
    (dict(color_jitter=-0.4), r'color_jitter must be a number >= 0 \(or null\)'),
    (dict(auto_augment='randaug-m9'), r"auto_augment must be a timm policy string .*'randaug-m9'"),
    (dict(re_prob=1.25), r're_prob must be a number in \[0, 1\]'),
    (dict(re_mode='zero'), r"re_mode must be one of \['const', 'pixel', 'rand'\]"),
    (dict(re_count=0), r're_count must be an int >= 1'),
    (dict(class_names=['cat', 'cat']), r"class_names must be two or more distinct folder names .*\['cat', 'cat'\]"),
    (dict(class_names=['cat']), r'class_names must be two or more distinct folder names'),
])
def test_image_folder_module_arguments_are_checked(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImageFolderDataModule(str(tmp_path), **kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=1), r'num_classes must be an int >= 2'),
    (dict(pretrained_num_classes=-1), r'pretrained_num_classes must be an int >= 0 \(or null\)'),
    (dict(drop_rate=1.0), r'drop_rate must be a number in \[0, 1\)'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be a number in \[0, 1\) \(or null\)'),
    (dict(img_size=0), r'img_size must be an int >= 1 \(or null\)'),
    (dict(opt='adamx'), r"opt must be a timm optimizer name .*got opt='adamx'"),
    (dict(opt='slow_adamw'), r"opt must be a timm optimizer name .*got opt='slow_adamw'"),  # timm drops the prefix
    (dict(lr=0.0), r'lr must be a number > 0 \(or null\), got lr=0.0'),
    (dict(lr=float('inf')), r'lr must be a number > 0'),
    (dict(lr_base=-1e-3), r'lr_base must be a number > 0'),
    (dict(lr_base_size=0), r'lr_base_size must be an int >= 1'),  # was a ZeroDivisionError at the first step
    (dict(lr_base_scale='log'), r"lr_base_scale must be one of \['linear', 'sqrt'\]"),
    (dict(weight_decay=-0.05), r'weight_decay must be a number >= 0, got weight_decay=-0.05'),
    (dict(layer_decay=0.0), r'layer_decay must be a number in \(0, 1\]'),
    (dict(opt_eps=0.0), r'opt_eps must be a number > 0'),
    (dict(opt_betas=(0.9,)), r'opt_betas must be a list of 2 numbers'),
    (dict(opt_betas=(0.9, 1.0)), r'opt_betas\[1\] must be a number in \[0, 1\)'),
    (dict(momentum=1.5), r'momentum must be a number in \[0, 1\)'),
    (dict(sched='plateau'), r"sched must be one of \[.*'cosine'.*\], got sched='plateau'"),  # steps per epoch
    (dict(warmup_epochs=-1), r'warmup_epochs must be an int >= 0'),
    (dict(warmup_epochs=1.5), r'warmup_epochs must be an int >= 0'),
    (dict(warmup_lr=-1e-6), r'warmup_lr must be a number >= 0'),
    (dict(min_lr=-1e-5), r'min_lr must be a number >= 0'),
    (dict(cooldown_epochs=-1), r'cooldown_epochs must be an int >= 0'),
    (dict(mixup=-0.8), r'mixup must be a number >= 0'),
    (dict(cutmix=-1.0), r'cutmix must be a number >= 0'),
    (dict(mixup_prob=1.5), r'mixup_prob must be a number in \[0, 1\]'),
    (dict(mixup_switch_prob=-0.5), r'mixup_switch_prob must be a number in \[0, 1\]'),
    (dict(mixup_mode='pairs'), r"mixup_mode must be one of \['batch', 'elem', 'pair'\]"),
    (dict(label_smoothing=1.5), r'label_smoothing must be a number in \[0, 1\)'),  # was a RuntimeError in the loss
    (dict(label_smoothing=True), r'label_smoothing must be a number in \[0, 1\), got label_smoothing=True'),
    (dict(opt_fused='yes'), r"opt_fused must be true, false or null, got opt_fused='yes'"),
    (dict(opt_fused=1), r'opt_fused must be true, false or null, got opt_fused=1'),
])
def test_classifier_module_arguments_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ClassifierModule('nat_test', num_classes=kwargs.pop('num_classes', 10), **kwargs)


def test_model_kwargs_refused_by_the_model_are_config_errors():
    """The model's own TypeError / ValueError for a ``model_kwargs`` entry reaches the CLI as a ConfigError (printed,
    exit 2) naming the model; it was a traceback."""
    with pytest.raises(ConfigError, match=r"^nat_test: mlp_ratio must be a number, got mlp_ratio='x'$"):
        ClassifierModule('nat_test', num_classes=10, model_kwargs=dict(mlp_ratio='x'))
    with pytest.raises(ConfigError, match=r'^nat_test: num_heads must give one int >= 1 per stage'):
        ClassifierModule('nat_test', num_classes=10, model_kwargs=dict(depths=(2, 2)))


def test_classifier_module_takes_the_edges_of_every_range():
    module = ClassifierModule(
        'nat_test', num_classes=2, pretrained_num_classes=0, drop_rate=0.0, drop_path_rate=0.0, lr=1e-3,
        opt='lookahead_sgd', weight_decay=0.0, layer_decay=1.0, opt_betas=(0.0, 0.999), momentum=0.0,
        sched='constant', warmup_epochs=0, warmup_lr=0.0, min_lr=0.0, mixup=0.0, cutmix=0.0, mixup_prob=1.0,
        mixup_switch_prob=0.0, label_smoothing=0.0)
    assert module.hparams.opt == 'lookahead_sgd'


def test_image_folder_transforms(tmp_path):
    from PIL import Image
    for split in ('train', 'val'):
        for c in ('b_dog', 'a_cat'):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(tmp_path / split / c / 'x.jpg')
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, batch_size=2, num_workers=0, pin_memory=False)
    assert dm.label_names == ['a_cat', 'b_dog'] and dm.num_classes == 2
    dm.setup('fit')
    x, y, skipped = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1] and int(skipped) == 0
    x, y, skipped = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32)


def test_collate_skipping_drops_and_counts():
    items = [(torch.zeros(3), 1), None, (torch.ones(3), 2), None]
    x, y, skipped = collate_skipping(items)
    assert x.shape == (2, 3) and y.tolist() == [1, 2] and int(skipped) == 2
    assert collate_skipping([None, None]) is None


# sampling

def test_resumable_sampler_is_epoch_seeded_sharded_and_skips():
    data = list(range(10))
    a = ResumableSampler(data, seed=3)
    a.set_epoch(1)
    b = ResumableSampler(data, seed=3)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == data
    b.set_epoch(2)
    assert list(a) != list(b)
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    assert sorted(list(ranks[0]) + list(ranks[1])) == data
    order = list(a)
    a.skip_batches(1, 2, 3)
    assert len(a) == 10 and list(a) == order[6:]  # once: the next pass is whole again
    assert list(a) == order


def test_seeded_dataset_is_deterministic_and_leaves_rng_alone(monkeypatch):
    monkeypatch.setenv('PL_GLOBAL_SEED', '5')

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2), random.random(), np.random.rand()

    ds = SeededDataset(Noise())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = ds[1]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)
    again = ds[1]
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first[0])
    assert mix_seed(1, 2) != mix_seed(2, 1)


# module

def test_lr_rule():
    assert resolve_lr(None, 1e-3, 1024, 'linear', 8 * 128)[0] == pytest.approx(1e-3)
    assert resolve_lr(None, 1e-3, 1024, 'linear', 4 * 8 * 128)[0] == pytest.approx(4e-3)
    assert resolve_lr(None, 5e-4, 512, 'sqrt', 2048)[0] == pytest.approx(1e-3)
    assert resolve_lr(3e-4, 1e-3, 1024, 'linear', 64)[0] == 3e-4


def test_model_name_check():
    check_model_name('nat_test')
    check_model_name('test_vit')
    with pytest.raises(ConfigError, match=r"Close names: .*dinat_s_tiny"):
        check_model_name('dinat_s_tinny')


def test_module_optimizer_groups_and_schedule():
    """No weight decay on biases/norms/rpb (timm's filter), the lr rule, warm-up then cosine stepped per update."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy
    module = ClassifierModule(model_name='nat_test', num_classes=10, weight_decay=0.05, warmup_epochs=1,
                              warmup_lr=1e-6, min_lr=1e-5, lr_base=1e-3, lr_base_size=1024)
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=20, accumulate_grad_batches=2, world_size=8, num_devices=4, num_nodes=2,
        num_training_batches=10, datamodule=SimpleNamespace(batch_size=32), gradient_clip_val=None,
        precision_plugin=None, strategy=SingleDeviceStrategy('cpu'))
    config = module.configure_optimizers()
    opt, sched = config['optimizer'], config['lr_scheduler']['scheduler']
    assert config['lr_scheduler']['interval'] == 'step'
    decay = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert decay and all(names[i].endswith('weight') and 'norm' not in names[i] for i in decay)
    assert any('rpb' in n for i, n in names.items() if i not in decay)
    peak = 1e-3 * 32 * 8 * 2 / 1024  # global batch 512
    lrs = []
    for step in range(20):  # 5 updates per epoch, 4 epochs, 1 of warm-up
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]['lr'])
    assert lrs[0] == pytest.approx(1e-6) and max(range(20), key=lrs.__getitem__) == 5
    # timm's cosine counts the warm-up updates too (warmup_prefix=False, as the NAT/DeiT scripts)
    assert lrs[5] == pytest.approx(1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 5 / 20)))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])) and 1e-5 <= lrs[-1] < peak / 10


# the fused optimizer (opt_fused)

def _trainer_for_optimizers(precision='32-true', clip=None, strategy=None):
    """A stand-in Trainer with what ``configure_optimizers`` reads: one CPU device, 10 batches of 32, 2 epochs."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.strategies import SingleDeviceStrategy
    plugin = Precision() if precision == '32-true' else MixedPrecision(precision, 'cpu')
    return SimpleNamespace(
        estimated_stepping_batches=20, accumulate_grad_batches=1, world_size=1, num_devices=1, num_nodes=1,
        num_training_batches=10, datamodule=SimpleNamespace(batch_size=32), precision=precision,
        precision_plugin=plugin, gradient_clip_val=clip, strategy=strategy or SingleDeviceStrategy('cpu'))


def _optimizer(trainer, **kwargs):
    module = ClassifierModule(model_name='nat_test', num_classes=10, lr=1e-3, **kwargs)
    module._trainer = trainer
    return module.configure_optimizers()['optimizer']


@pytest.mark.parametrize('opt', ['adamw', 'adam', 'sgd', 'nesterov', 'adagrad', 'lookahead_adamw'])
def test_optimizer_is_fused_where_torch_has_it(opt):
    """By default the optimizers torch has a fused kernel for are built fused (also inside Lookahead), with gradient
    clipping in full precision (the demo's settings); ``opt_fused=False`` keeps torch's default."""
    def inner(optimizer):  # the optimizer inside timm's Lookahead wrapper
        return optimizer._base_optimizer if opt.startswith('lookahead') else optimizer

    fused = inner(_optimizer(_trainer_for_optimizers(clip=5.0), opt=opt))
    assert type(fused).__module__.startswith('torch.optim')
    assert fused.defaults['fused'] is True and all(g['fused'] for g in fused.param_groups)
    default = inner(_optimizer(_trainer_for_optimizers(clip=5.0), opt=opt, opt_fused=False))
    assert type(default) is type(fused) and not default.defaults['fused']


def test_fused_optimizer_steps_like_the_default_one():
    """One fused AdamW step on the module's parameter groups moves every weight as the default implementation does
    (to rounding): the fused kernel is the same update."""
    torch.manual_seed(0)
    module = ClassifierModule(model_name='nat_test', num_classes=10, lr=1e-2)
    module._trainer = _trainer_for_optimizers()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    grads = [torch.randn_like(p) for p in module.parameters()]
    moved = []
    for fused in (True, False):
        module.load_state_dict(start)
        module.hparams.opt_fused = fused
        optimizer = module.configure_optimizers()['optimizer']
        assert bool(optimizer.defaults.get('fused')) == fused
        for p, g in zip(module.parameters(), grads):
            p.grad = g.clone()
        optimizer.step()
        moved.append([p.detach().clone() for p in module.parameters()])
    for a, b, p0 in zip(*moved, start.values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(a, p0) for a, p0 in zip(moved[0], start.values()))


def test_optimizer_not_fused_where_it_cannot_be():
    """Left at None, opt_fused falls back and says why: an optimizer without a fused kernel, clipping under mixed
    precision (Lightning refuses it), a strategy other than single-device / DDP; set to True it is a ConfigError
    naming the reason."""
    from types import SimpleNamespace
    cases = [
        (dict(opt='lamb'), _trainer_for_optimizers(), r"opt='lamb' \(timm.optim.lamb.Lamb\) has no fused"),
        (dict(), _trainer_for_optimizers('bf16-mixed', clip=1.0),
         r'Lightning does not clip the gradients of a fused optimizer under mixed precision \(precision=bf16-mixed, '
         r'gradient_clip_val=1\)'),
    ]
    for kwargs, trainer, match in cases:
        assert not _optimizer(trainer, **kwargs).defaults.get('fused')
        with pytest.raises(ConfigError, match=r'^opt_fused=True: ' + match):
            _optimizer(trainer, opt_fused=True, **kwargs)
    # without clipping, mixed precision takes the fused optimizer (it unscales inside its kernel)
    assert _optimizer(_trainer_for_optimizers('16-mixed')).defaults['fused'] is True
    other = _trainer_for_optimizers(strategy=SimpleNamespace())  # e.g. DeepSpeed: only when asked for
    assert not _optimizer(other).defaults.get('fused')
    assert _optimizer(other, opt_fused=True).defaults['fused'] is True


def test_fused_unavailable_probes_the_parameters():
    """Devices and dtypes without torch's fused kernel are named (probed with a one-element step)."""
    from zoo.train.module import fused_unavailable
    trainer = _trainer_for_optimizers()
    assert fused_unavailable('adamw', [torch.zeros(2, requires_grad=True)], trainer) is None
    assert fused_unavailable('adamw', [torch.zeros(2, dtype=torch.float64, requires_grad=True)], trainer) is None
    assert fused_unavailable('adamw', [torch.zeros(2, dtype=torch.complex64, requires_grad=True)], trainer) == \
        'torch has no fused AdamW for torch.complex64 parameters on cpu'
    assert fused_unavailable('sgd', [torch.zeros(2, device='meta', requires_grad=True)], trainer) == \
        'torch has no fused SGD for torch.float32 parameters on meta'
    # parameters that are not trained are not probed
    assert fused_unavailable('adamw', [torch.zeros(2, dtype=torch.complex64)], trainer) is None


def test_resumed_optimizer_keeps_the_checkpoint_s_implementation():
    """What docs/training.md says of a resume: loading a per-tensor AdamW's state into the fused optimizer the module
    now builds restores the per-tensor implementation (and the other way round), so the run continues as it began."""
    module = ClassifierModule(model_name='nat_test', num_classes=10, lr=1e-3)
    module._trainer = _trainer_for_optimizers()
    states = {}
    for fused in (False, True):
        module.hparams.opt_fused = fused
        optimizer = module.configure_optimizers()['optimizer']
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        states[fused] = optimizer.state_dict()
    for saved, now in ((False, True), (True, False)):
        module.hparams.opt_fused = now
        optimizer = module.configure_optimizers()['optimizer']
        optimizer.load_state_dict(states[saved])
        assert all(bool(g['fused']) == saved for g in optimizer.param_groups)
