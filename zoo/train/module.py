"""``ClassifierModule``: a LightningModule around any ``timm.create_model`` name, trained with timm's pieces.

The model is ``timm.create_model(model_name, num_classes=..., drop_path_rate=..., ...)`` through
:func:`zoo.models.create_model` (every zoo model is registered by ``import zoo``, which importing this module
does). Training uses timm's ``Mixup``/CutMix with ``SoftTargetCrossEntropy`` (or cross-entropy with label
smoothing), ``create_optimizer_v2`` (AdamW by default; no weight decay on biases, norms and
``model.no_weight_decay()``; optional layer-wise decay through the model's ``group_matcher``; torch's fused
implementation where it runs: :func:`fused_unavailable`) and
``create_scheduler_v2`` (cosine with warm-up, stepped after every optimizer update).
Gradient clipping, precision and accumulation are Trainer arguments; an EMA of the weights is Lightning's
``EMAWeightAveraging`` callback (see ``configs/*_in1k.yaml``), which also swaps the EMA weights in for validation.

Learning rate: an explicit ``lr`` is used as given. Without one, ``lr = lr_base * global_batch / lr_base_size``
(``lr_base_scale='linear'``; ``'sqrt'`` uses the square root of the ratio), where ``global_batch = batch_size *
devices * num_nodes * accumulate_grad_batches``. Recipes state the paper's lr at the paper's global batch, so the
same YAML trains correctly on any number of devices.

Metrics (``sync_dist`` across ranks): ``train_loss``, ``val_loss``, ``val_acc`` (top-1), ``val_acc5`` (top-5),
likewise ``test_*``; ``train_skipped``/``val_skipped`` count unreadable images an ImageFolder dropped.
"""
import inspect
import logging
import math
import os
from typing import Any, Dict, Iterable, List, Literal, Optional, Tuple

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics.classification import MulticlassAccuracy

import zoo  # noqa: F401  (registers the zoo's models with timm)
from zoo.models import factory

from .errors import ConfigError, check_choice, check_number, check_numbers
from .sampling import seed_step

__all__ = ['ClassifierModule', 'check_hparams', 'check_model_name', 'fused_unavailable', 'resolve_lr']

_logger = logging.getLogger(__name__)


def check_model_name(model_name: str) -> None:
    """Raise ``ConfigError`` naming close matches if ``model_name`` is not registered with timm (or the zoo); see
    :func:`zoo.models.check_model_name`."""
    try:
        factory.check_model_name(model_name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# timm's create_scheduler_v2 names; 'plateau' is left out: it steps per epoch on a metric, this module per update
SCHEDULERS = ('cosine', 'tanh', 'step', 'multistep', 'constant', 'poly', 'wsd', 'rsqrt')


def check_optimizer_name(opt: Any) -> None:
    """Raise ``ConfigError`` unless ``opt`` is a timm optimizer name, optionally as ``lookahead_<name>`` (timm
    reads the part after the last underscore as the optimizer and ignores any other prefix)."""
    from timm.optim import list_optimizers
    parts = opt.lower().split('_') if isinstance(opt, str) else []
    if not parts or parts[-1] not in list_optimizers() or parts[:-1] not in ([], ['lookahead']):
        raise ConfigError(f'opt must be a timm optimizer name (timm.optim.list_optimizers(), e.g. adamw, sgd, lamb; '
                          f'lookahead_<name> for Lookahead), got opt={opt!r}.')


def check_hparams(h: Dict[str, Any]) -> None:
    """Raise ``ConfigError`` naming the first of :class:`ClassifierModule`'s numeric / named arguments outside its
    valid values (before the model is built: a negative weight decay or warm-up would otherwise train silently,
    a label smoothing above 1 fail at the first step)."""
    check_number('num_classes', h['num_classes'], 2, integer=True)  # a classifier needs two classes
    check_number('pretrained_num_classes', h['pretrained_num_classes'], 0, integer=True, optional=True)
    check_number('drop_rate', h['drop_rate'], 0, 1, high_open=True)
    check_number('drop_path_rate', h['drop_path_rate'], 0, 1, high_open=True, optional=True)
    check_number('img_size', h['img_size'], 1, integer=True, optional=True)
    check_optimizer_name(h['opt'])
    check_number('lr', h['lr'], 0, low_open=True, optional=True)
    check_number('lr_base', h['lr_base'], 0, low_open=True)
    check_number('lr_base_size', h['lr_base_size'], 1, integer=True)
    check_choice('lr_base_scale', h['lr_base_scale'], ('linear', 'sqrt'))
    check_number('weight_decay', h['weight_decay'], 0)
    check_number('layer_decay', h['layer_decay'], 0, 1, low_open=True, optional=True)
    check_number('opt_eps', h['opt_eps'], 0, low_open=True)
    if h['opt_betas'] is not None:
        check_numbers('opt_betas', h['opt_betas'], 2, 0, 1, high_open=True)
    check_number('momentum', h['momentum'], 0, 1, high_open=True)
    if not isinstance(h['opt_fused'], (bool, type(None))):
        raise ConfigError(f"opt_fused must be true, false or null, got opt_fused={h['opt_fused']!r}.")
    check_choice('sched', h['sched'], SCHEDULERS)
    check_number('warmup_epochs', h['warmup_epochs'], 0, integer=True)
    check_number('warmup_lr', h['warmup_lr'], 0)
    check_number('min_lr', h['min_lr'], 0)
    check_number('cooldown_epochs', h['cooldown_epochs'], 0, integer=True)
    check_number('mixup', h['mixup'], 0)
    check_number('cutmix', h['cutmix'], 0)
    check_number('mixup_prob', h['mixup_prob'], 0, 1)
    check_number('mixup_switch_prob', h['mixup_switch_prob'], 0, 1)
    check_choice('mixup_mode', h['mixup_mode'], ('batch', 'pair', 'elem'))
    check_number('label_smoothing', h['label_smoothing'], 0, 1, high_open=True)


def resolve_lr(
        lr: Optional[float],
        lr_base: float,
        lr_base_size: int,
        lr_base_scale: str,
        global_batch: int,
) -> Tuple[float, str]:
    """The learning rate to use and a sentence saying how it was obtained (see the module docstring)."""
    if lr is not None:
        return lr, f'lr={lr:g} (given; global batch {global_batch})'
    ratio = global_batch / lr_base_size
    if lr_base_scale == 'linear':
        factor = ratio
    elif lr_base_scale == 'sqrt':
        factor = math.sqrt(ratio)
    else:
        raise ConfigError(f"lr_base_scale must be 'linear' or 'sqrt', got {lr_base_scale!r}.")
    value = lr_base * factor
    return value, (f'lr={value:.4g} = lr_base {lr_base:g} x {lr_base_scale}({global_batch} / {lr_base_size}) '
                   f'(global batch {global_batch})')


def _optimizer_class(opt: str) -> type:
    """The class timm's ``create_optimizer_v2`` builds for ``opt`` (the inner one of ``lookahead_<name>``)."""
    from timm.optim import get_optimizer_class
    return get_optimizer_class(opt.lower().split('_')[-1], bind_defaults=False)


def _fused_step_runs(optimizer_class: type, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a fused ``optimizer_class`` steps a ``dtype`` parameter on ``device`` (torch decides per optimizer,
    device and dtype, and says so only at the first step)."""
    param = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    param.grad = torch.zeros_like(param)
    try:
        optimizer_class([param], lr=1e-3, fused=True).step()
    except (RuntimeError, NotImplementedError):  # torch's refusal; a backend without the kernel: no dispatch entry
        return False
    return True


def fused_unavailable(opt: str, params: Iterable[torch.Tensor], trainer: Any) -> Optional[str]:
    """Why torch's fused implementation of optimizer ``opt`` cannot train ``params`` under ``trainer``; None if it can.

    The fused implementation (torch's Adam, AdamW, SGD and Adagrad: one kernel per step for every tensor, instead of
    a loop over the tensors on the CPU or a few multi-tensor kernels on a GPU) needs an optimizer class with a
    ``fused`` argument, parameters of devices and dtypes that torch has its kernel for (probed with a one-element
    step per device and dtype), and no gradient clipping under mixed precision (Lightning refuses to clip the
    gradients of an optimizer that unscales them itself).
    """
    optimizer_class = _optimizer_class(opt)
    if 'fused' not in inspect.signature(optimizer_class).parameters:
        return (f'opt={opt!r} ({optimizer_class.__module__}.{optimizer_class.__qualname__}) has no fused '
                f'implementation')
    clip = getattr(trainer, 'gradient_clip_val', None) or 0
    if clip > 0 and isinstance(getattr(trainer, 'precision_plugin', None), MixedPrecision):
        return (f'Lightning does not clip the gradients of a fused optimizer under mixed precision '
                f'(precision={trainer.precision}, gradient_clip_val={clip:g})')
    kinds = {(p.device, p.dtype) for p in params if p.requires_grad}
    for device, dtype in sorted(kinds, key=str):
        if not _fused_step_runs(optimizer_class, device, dtype):
            return f'torch has no fused {optimizer_class.__name__} for {dtype} parameters on {device.type}'
    return None


def _fuse_optimizer(opt_fused: Optional[bool], opt: str, params: Iterable[torch.Tensor], trainer: Any) -> bool:
    """Whether to build ``opt`` fused: ``opt_fused`` as :class:`ClassifierModule` documents it; a ConfigError
    where ``opt_fused`` is True and :func:`fused_unavailable` gives a reason."""
    if opt_fused is False:
        return False
    reason = fused_unavailable(opt, params, trainer)
    if opt_fused is None and reason is None and not isinstance(
            getattr(trainer, 'strategy', None), (SingleDeviceStrategy, DDPStrategy)):
        reason = (f'{type(trainer.strategy).__name__}: chosen automatically under single-device and DDP strategies '
                  f'only (opt_fused: true uses it)')
    if reason is not None and opt_fused:
        raise ConfigError(f'opt_fused=True: {reason}; set opt_fused to null (fused where it runs) or false.')
    rank_zero_info(f'{opt}: ' + ("torch's fused implementation" if reason is None else f'not fused ({reason})'))
    return reason is None


class ClassifierModule(LightningModule):
    """Image classifier training any timm-registered model.

    Args:
        model_name: a ``timm.list_models()`` name (after ``import zoo``), or ``hf-hub:``/``local-dir:`` source.
        num_classes: classifier outputs; the CLI links it from the data module.
        pretrained: weights to start from: a file (``.safetensors``/``.pth``, filtered by the family's
            ``checkpoint_filter_fn``) or a folder written by ``python -m zoo.weights export``. None: random init.
        pretrained_num_classes: classes of the file's head; None assumes ``num_classes`` (the head is loaded);
            a different value drops the head and starts a new one (fine-tuning). Read from ``config.json`` for
            an export folder.
        drop_rate: classifier dropout.
        drop_path_rate: stochastic depth rate; None keeps the model's default.
        img_size: input size passed to models with a fixed input size (ViT-like); ignored by the others.
            The CLI links it from the data module.
        model_kwargs: extra ``timm.create_model`` arguments.
        label_names: class names in label order (linked from the data; stored in exports and predictions).
        data_config: input size, mean, std, interpolation and crop_pct of the data (linked from the data;
            recorded by exports).
        grad_checkpointing: ``model.set_grad_checkpointing()`` (less memory, about 30% more compute).
        channels_last: NHWC memory format for the model and the inputs (faster convolutions on GPUs).
        compile: ``torch.compile`` the model's forward (``nn.Module.compile(dynamic=False)``: the state-dict keys do
            not change; the first steps are slow while it compiles, and a last smaller eval batch recompiles once).
        opt: timm optimizer name ('adamw', 'lamb', 'sgd', ...).
        lr: absolute learning rate; None derives it from ``lr_base`` and the global batch.
        lr_base: learning rate at the reference global batch ``lr_base_size``.
        lr_base_size: reference global batch of ``lr_base``.
        lr_base_scale: 'linear' or 'sqrt' scaling of ``lr_base`` with the global batch.
        weight_decay: decoupled weight decay (not applied to biases, norms, ``no_weight_decay()`` names).
        layer_decay: layer-wise lr decay (e.g. 0.75 for fine-tuning); None disables.
        opt_eps: optimizer epsilon.
        opt_betas: Adam betas; None keeps the optimizer's default.
        momentum: SGD momentum.
        opt_fused: torch's fused implementation of the optimizer (Adam, AdamW, SGD, Adagrad: one kernel per step over
            every tensor). None: fused where it runs (:func:`fused_unavailable`) under a single-device or DDP
            strategy, else not; True: fused, or a ConfigError saying why not; False: torch's default implementation
            (a loop over the tensors on the CPU, multi-tensor kernels on a GPU).
        sched: timm scheduler ('cosine', 'step', 'multistep', 'plateau', 'tanh', 'poly', ...).
        warmup_epochs: linear warm-up length, in epochs (stepped per update).
        warmup_lr: learning rate at the start of the warm-up.
        min_lr: floor of the decay.
        cooldown_epochs: epochs at ``min_lr`` after the decay; the decay lasts ``max_epochs - cooldown_epochs``.
        mixup: Mixup alpha (0 disables).
        cutmix: CutMix alpha (0 disables).
        mixup_prob: probability of mixing a batch.
        mixup_switch_prob: probability of CutMix instead of Mixup when both are on.
        mixup_mode: 'batch', 'pair' or 'elem'.
        label_smoothing: label smoothing (folded into the Mixup targets when mixing).
        step_seeding: reseed the generators from (seed, epoch, batch) at every step when a global seed is set,
            so that a resumed run repeats the uninterrupted run exactly (see :mod:`zoo.train.sampling`).

    Raises:
        ConfigError: an unknown model, optimizer or scheduler name, or a number outside its valid values (naming
            it and the range: :func:`check_hparams`); ``min_lr`` above the resolved ``lr`` when training starts.
    """

    def __init__(
            self,
            model_name: str = 'nat_test',
            num_classes: int = 1000,
            pretrained: Optional[str] = None,
            pretrained_num_classes: Optional[int] = None,
            drop_rate: float = 0.0,
            drop_path_rate: Optional[float] = None,
            img_size: Optional[int] = None,
            model_kwargs: Optional[Dict[str, Any]] = None,
            label_names: Optional[List[str]] = None,
            data_config: Optional[Dict[str, Any]] = None,
            grad_checkpointing: bool = False,
            channels_last: bool = False,
            compile: bool = False,
            opt: str = 'adamw',
            lr: Optional[float] = None,
            lr_base: float = 1e-3,
            lr_base_size: int = 1024,
            lr_base_scale: Literal['linear', 'sqrt'] = 'linear',
            weight_decay: float = 0.05,
            layer_decay: Optional[float] = None,
            opt_eps: float = 1e-8,
            opt_betas: Optional[Tuple[float, float]] = None,
            momentum: float = 0.9,
            opt_fused: Optional[bool] = None,
            sched: str = 'cosine',
            warmup_epochs: int = 0,
            warmup_lr: float = 1e-6,
            min_lr: float = 1e-5,
            cooldown_epochs: int = 0,
            mixup: float = 0.0,
            cutmix: float = 0.0,
            mixup_prob: float = 1.0,
            mixup_switch_prob: float = 0.5,
            mixup_mode: Literal['batch', 'pair', 'elem'] = 'batch',
            label_smoothing: float = 0.1,
            step_seeding: bool = True,
    ):
        super().__init__()
        check_model_name(model_name)
        self.save_hyperparameters()
        check_hparams(self.hparams)
        if label_names is not None and len(label_names) != num_classes:
            raise ConfigError(f'label_names has {len(label_names)} names but num_classes={num_classes}.')
        self.model = create_timm_model(
            model_name, num_classes, img_size=img_size, model_kwargs=model_kwargs, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, pretrained=pretrained, pretrained_num_classes=pretrained_num_classes)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            # static shapes: training batches have one size (drop_last); dynamic shapes trip Inductor on NA's padding
            self.model.compile(dynamic=False)

        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            self.mixup_fn = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=mixup_switch_prob,
                mode=mixup_mode, label_smoothing=label_smoothing, num_classes=num_classes)
            self.train_loss_fn = SoftTargetCrossEntropy()
        else:
            self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()
        top5 = min(5, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average='micro')
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average='micro')
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average='micro')
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average='micro')

    @property
    def label_names(self) -> List[str]:
        names = self.hparams.label_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, 3, H, W]`` normalised images -> logits ``[B, num_classes]``."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # training

    def setup(self, stage: str) -> None:
        if stage == 'fit' and self.mixup_fn is not None:
            batch_size = _batch_size(self.trainer)
            if batch_size is not None and batch_size % 2:
                raise ConfigError(
                    f'batch_size={batch_size} is odd, but Mixup/CutMix (mixup={self.hparams.mixup}, '
                    f'cutmix={self.hparams.cutmix}) mixes each batch with its flipped copy and needs an even '
                    f'per-device batch: set --data.batch_size {batch_size + 1} (or {batch_size - 1}).')

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.step_seeding:
            seed_step(self.current_epoch, batch_idx, self.global_rank)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, skipped = _unpack(batch)
        if self.mixup_fn is not None:
            if x.shape[0] % 2:  # an unreadable image was dropped from an even batch: Mixup pairs samples
                x, y = x[:-1], y[:-1]
            x, y = self.mixup_fn(x, y)
        logits = self(x)
        loss = self.train_loss_fn(logits, y)
        self.log('train_loss', loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=x.shape[0])
        if skipped is not None:
            self.log('train_skipped', skipped.float(), on_step=False, on_epoch=True, reduce_fx='sum',
                     sync_dist=True, batch_size=1)
        return loss

    def _eval_step(self, batch, prefix: str, acc: MulticlassAccuracy, acc5: MulticlassAccuracy) -> None:
        x, y, skipped = _unpack(batch)
        logits = self(x)
        loss = self.eval_loss_fn(logits, y)
        acc.update(logits, y)
        acc5.update(logits, y)
        n = x.shape[0]
        self.log(f'{prefix}_loss', loss, on_epoch=True, prog_bar=prefix == 'val', sync_dist=True, batch_size=n)
        self.log(f'{prefix}_acc', acc, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f'{prefix}_acc5', acc5, on_epoch=True, batch_size=n)
        if skipped is not None:
            self.log(f'{prefix}_skipped', skipped.float(), on_epoch=True, reduce_fx='sum', sync_dist=True,
                     batch_size=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, 'val', self.val_acc, self.val_acc5)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, 'test', self.test_acc, self.test_acc5)

    def on_train_epoch_end(self) -> None:
        self._report_skipped('train')

    def on_validation_epoch_end(self) -> None:
        self._report_skipped('val')

    def _report_skipped(self, prefix: str) -> None:
        value = self.trainer.callback_metrics.get(f'{prefix}_skipped')
        if value is not None and float(value) > 0:
            rank_zero_warn(f'{int(value)} unreadable image(s) were skipped in this {prefix} epoch '
                           f'(their paths are in the warnings above).')

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        """Top-5 classes and probabilities: ``{'ids': [...], 'classes': [B, k] int64, 'probs': [B, k] float32}``."""
        x, ids = batch[0], list(batch[1])
        probs = self(x).float().softmax(dim=-1)
        top_probs, top_classes = probs.topk(min(5, probs.shape[-1]), dim=-1)
        return {'ids': ids, 'classes': top_classes.cpu(), 'probs': top_probs.cpu()}

    # optimisation

    def configure_optimizers(self):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        h = self.hparams
        trainer = self.trainer
        total_updates = int(trainer.estimated_stepping_batches)  # also sets up the train loader
        batch_size = _batch_size(trainer)
        accumulate = trainer.accumulate_grad_batches
        if batch_size is None:
            if h.lr is None:
                raise ConfigError(
                    'lr: cannot scale lr_base without a data module exposing batch_size; give --model.lr.')
            global_batch = -1
        else:
            global_batch = batch_size * trainer.world_size * accumulate
        lr, how = resolve_lr(h.lr, h.lr_base, h.lr_base_size, h.lr_base_scale, global_batch)
        if h.min_lr > lr:
            raise ConfigError(f'min_lr={h.min_lr:g} is above the learning rate {lr:g} ({how}): the schedule would '
                              f'raise the rate as it decays; lower min_lr or raise lr.')
        rank_zero_info(f'{h.model_name}: {how}; global batch = {batch_size} per device x {trainer.num_devices} '
                       f'device(s) x {trainer.num_nodes} node(s) x {accumulate} accumulation step(s).')

        opt_kwargs = dict(eps=h.opt_eps)
        if h.opt_betas is not None:
            opt_kwargs['betas'] = tuple(h.opt_betas)
        if h.opt.lower() in ('sgd', 'momentum', 'nesterov'):
            opt_kwargs = dict(momentum=h.momentum)
        if _fuse_optimizer(h.opt_fused, h.opt, self.model.parameters(), trainer):
            opt_kwargs['fused'] = True
        optimizer = create_optimizer_v2(
            self.model, opt=h.opt, lr=lr, weight_decay=h.weight_decay, layer_decay=h.layer_decay, **opt_kwargs)

        num_batches = trainer.num_training_batches
        if num_batches == float('inf'):
            raise ConfigError('The training loader has no length: the per-update schedule needs one.')
        updates_per_epoch = max(1, math.ceil(num_batches / accumulate))
        epochs = max(1, math.ceil(total_updates / updates_per_epoch))
        if h.cooldown_epochs >= epochs:
            raise ConfigError(f'cooldown_epochs={h.cooldown_epochs} leaves no decay in {epochs} epoch(s).')
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=h.sched, num_epochs=epochs - h.cooldown_epochs, warmup_epochs=h.warmup_epochs,
            warmup_lr=h.warmup_lr, min_lr=h.min_lr, cooldown_epochs=h.cooldown_epochs, step_on_epochs=False,
            updates_per_epoch=updates_per_epoch)
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}

    def lr_scheduler_step(self, scheduler, metric: Optional[Any]) -> None:
        # timm schedulers are not torch LRSchedulers: they take the update count (after this update)
        scheduler.step_update(num_updates=self.global_step, metric=metric)

    # checkpoints

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        trainer = self._trainer
        if trainer is not None:
            checkpoint['zoo_metrics'] = {
                k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        hp = checkpoint.get('hyper_parameters', {})
        saved = hp.get('num_classes')
        head = _head_classes(checkpoint.get('state_dict', {}), self.model)
        found = saved if saved is not None else head
        if found is not None and found != self.hparams.num_classes:
            raise ConfigError(
                f'The checkpoint was trained for num_classes={found}, but the data has '
                f'num_classes={self.hparams.num_classes}. Resume with the same data, or start a new run that '
                f'fine-tunes from exported weights: --model.pretrained <export dir> (a new head is created).')
        name = hp.get('model_name')
        if name is not None and name != self.hparams.model_name:
            raise ConfigError(f'The checkpoint holds model_name={name!r}, but this run builds '
                             f'model_name={self.hparams.model_name!r}.')


def create_timm_model(
        model_name: str,
        num_classes: int,
        img_size: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        drop_rate: float = 0.0,
        drop_path_rate: Optional[float] = None,
        pretrained: Optional[str] = None,
        pretrained_num_classes: Optional[int] = None,
) -> nn.Module:
    """Build the timm model for :class:`ClassifierModule` (and the exporter): see its arguments."""
    check_model_name(model_name)
    kwargs = dict(model_kwargs or {})
    kwargs['drop_rate'] = drop_rate
    if drop_path_rate is not None:
        kwargs['drop_path_rate'] = drop_path_rate
    if pretrained:
        file, head_classes = _pretrained_source(pretrained, pretrained_num_classes, num_classes, model_name)
        kwargs['pretrained'] = True
        kwargs['pretrained_cfg_overlay'] = dict(file=file, num_classes=head_classes)
    try:
        return factory.create_model(model_name, input_size=img_size, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:  # a model / model_kwargs argument the model refuses, named by the model
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f'{model_name}: {e}') from e


def _pretrained_source(path: str, head_classes: Optional[int], num_classes: int,
                       model_name: str) -> Tuple[str, int]:
    if os.path.isdir(path):
        file = os.path.join(path, 'model.safetensors')
        saved = factory.read_export_config(path)
        if saved is None or not os.path.isfile(file):
            raise ConfigError(f'pretrained: folder {path!r} lacks config.json/model.safetensors '
                             f'(write one with: python -m zoo.weights export).')
        arch = saved.get('architecture')
        if arch is not None and arch != model_name:
            raise ConfigError(
                f'pretrained: folder {path!r} holds {arch!r} weights (its config.json), but model_name='
                f'{model_name!r}. Give --model.model_name {arch}, or the folder\'s model.safetensors itself to load '
                f'the weights into another architecture with the same keys.')
        head_classes = head_classes if head_classes is not None else saved.get('num_classes')
        return file, head_classes if head_classes is not None else num_classes
    if not os.path.isfile(path):
        raise ConfigError(f'pretrained: {path!r} is neither a weights file nor an export folder.')
    return path, head_classes if head_classes is not None else num_classes


def _head_classes(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Optional[int]:
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier')
    if not classifier:
        return None
    weight = state_dict.get(f'model.{classifier}.weight')
    return None if weight is None else int(weight.shape[0])


def _batch_size(trainer) -> Optional[int]:
    datamodule = getattr(trainer, 'datamodule', None)
    size = getattr(datamodule, 'batch_size', None)
    if size is None:
        loader = getattr(trainer.fit_loop, '_combined_loader', None)
        if loader is not None and loader.flattened:
            size = getattr(loader.flattened[0], 'batch_size', None)
    return size


def _unpack(batch) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    return batch[0], batch[1], None
