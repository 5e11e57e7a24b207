"""Lightning data modules: the embedded digits set (no download) and ImageFolder trees.

Batches are ``(images, targets)`` for training, validation and test, with images ``[B, 3, H, W]`` float32,
normalised, and targets ``[B]`` int64. ImageFolder batches carry a third element, the number of unreadable
images dropped from the batch (``[]`` int64), which :class:`~zoo.train.module.ClassifierModule` sums and logs.
Predict batches are ``(images, ids, skipped)`` with ``ids`` the image paths (or ``digits/val/<i>``).

Both modules expose ``num_classes``, ``label_names`` and ``data_config`` (input size, mean, std,
interpolation, crop_pct: what an exported model records), which the CLI links into the model's arguments.
"""
import logging
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from .errors import ConfigError, check_choice, check_number, check_numbers
from .sampling import ResumableSampler, SeededDataset

__all__ = ['DigitsDataModule', 'ImageFolderDataModule', 'ImageFileDataset', 'ImageFilesPredictDataset',
           'collate_skipping', 'IMG_EXTENSIONS']

_logger = logging.getLogger(__name__)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError)  # PIL raises these (UnidentifiedImageError is an OSError)


def collate_skipping(items: Sequence[Any]):
    """Collate a batch, dropping the ``None`` items a dataset returned for unreadable files.

    Returns the default collation of the readable items with the number dropped appended
    (``(*collated, torch.tensor(n_dropped))``), or None when no item of the batch could be read
    (Lightning skips a None training batch with a warning; under DDP that rank would then miss a gradient
    all-reduce the others wait for, so a dataset whose corrupt files fill whole batches must be cleaned first).
    A batch can come out one sample short of even; the model drops one more sample when Mixup needs pairs.
    """
    valid = [item for item in items if item is not None]
    skipped = torch.tensor(len(items) - len(valid))
    if not valid:
        _logger.warning('Every image of a batch of %d was unreadable; the batch is skipped.', len(items))
        return None
    return (*default_collate(valid), skipped)


def _load_rgb(path: str):
    from PIL import Image
    with open(path, 'rb') as f:
        img = Image.open(f)
        img.load()
    return img.convert('RGB')


def _list_images(directory: str) -> List[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS))
    return paths


def _check_dir(path: str, arg: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f'{arg}: folder {path!r} does not exist (absolute: {os.path.abspath(path)!r}).')


def _find_classes(directory: str, arg: str) -> List[str]:
    _check_dir(directory, arg)
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise ConfigError(
            f'{arg}: folder {directory!r} has no class sub-folders; expected {directory}/<class>/<image> '
            f'(ImageFolder layout).')
    return classes


def _scan_split(directory: str, classes: Sequence[str], arg: str) -> List[Tuple[str, int]]:
    _check_dir(directory, arg)
    samples, unknown = [], []
    present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise ConfigError(
            f'{arg}: folder {directory!r} has class folders absent from the training classes: {unknown[:10]}.')
    for idx, name in enumerate(classes):
        class_dir = os.path.join(directory, name)
        if os.path.isdir(class_dir):
            samples.extend((p, idx) for p in _list_images(class_dir))
    if not samples:
        raise ConfigError(
            f'{arg}: folder {directory!r} holds no images with extensions {IMG_EXTENSIONS} under its class folders.')
    return samples


class ImageFileDataset(Dataset):
    """``(path, label)`` pairs read with PIL; an unreadable file gives ``None`` (logged) instead of an exception.

    Use with :func:`collate_skipping`, which drops and counts the ``None`` items.

    Args:
        samples: ``(path, class index)`` pairs.
        transform: callable on an RGB PIL image, returning ``[3, H, W]`` float32.
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], transform=None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            img = _load_rgb(path)
        except _READ_ERRORS as e:
            _logger.warning('Skipping unreadable image %s (%s: %s)', path, type(e).__name__, e)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class ImageFilesPredictDataset(ImageFileDataset):
    """Every image under a folder (recursive, sorted); items are ``(image, path)`` or ``None`` if unreadable.

    Args:
        directory: folder to scan for files with an image extension.
        transform: callable on an RGB PIL image.

    Raises:
        ValueError: the folder does not exist or holds no image.
    """

    def __init__(self, directory: str, transform=None):
        _check_dir(directory, 'predict_dir')
        paths = _list_images(directory)
        if not paths:
            raise ConfigError(f'predict_dir: folder {directory!r} holds no files with extensions {IMG_EXTENSIONS}.')
        super().__init__([(p, -1) for p in paths], transform)

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        return None if item is None else (item[0], self.samples[index][0])


class _TrainLoaderMixin:
    """Resumable, epoch-seeded training loader shared by the data modules (see :mod:`zoo.train.sampling`)."""

    _resume_batches: Optional[Tuple[int, int]] = None

    def _world(self) -> Tuple[int, int]:
        trainer = getattr(self, 'trainer', None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _train_loader(self, dataset: Dataset, collate_fn=None) -> DataLoader:
        world, rank = self._world()
        sampler = ResumableSampler(SeededDataset(dataset), num_replicas=world, rank=rank, shuffle=True)
        if sampler.num_samples < self.hparams.batch_size:  # drop_last: no batch at all, Lightning would skip training
            raise ConfigError(
                f'batch_size={self.hparams.batch_size} is larger than the {sampler.num_samples} training images of '
                f'each device ({len(dataset)} in all over {world} device(s)): with drop_last there is no training '
                f'batch; lower --data.batch_size.')
        if self._resume_batches is not None:
            epoch, batches = self._resume_batches
            sampler.set_epoch(epoch)
            sampler.skip_batches(epoch, batches, self.hparams.batch_size)
            self._resume_batches = None
        return DataLoader(
            sampler.dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            drop_last=True,  # Mixup needs even batches, and a tiny last batch is noise
            num_workers=self.hparams.num_workers,
            pin_memory=getattr(self.hparams, 'pin_memory', False),
            persistent_workers=False,  # workers must be restarted each epoch to see the sampler's epoch
            collate_fn=collate_fn,
        )

    def _eval_loader(self, dataset: Dataset, batch_size: Optional[int] = None, collate_fn=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            pin_memory=getattr(self.hparams, 'pin_memory', False),
            collate_fn=collate_fn,
        )

    def state_dict(self) -> Dict[str, Any]:
        """Where in the epoch a checkpoint was written, so a resume skips the batches already trained on."""
        trainer = getattr(self, 'trainer', None)
        if trainer is None or not trainer.training:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {'epoch': trainer.current_epoch, 'batches_done': progress.processed}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict and state_dict.get('batches_done'):
            self._resume_batches = (state_dict['epoch'], state_dict['batches_done'])
            # the sampler skips the batches already trained on, which Lightning cannot see
            warnings.filterwarnings('ignore', message="You're resuming from a checkpoint that ended before the epoch")


class DigitsDataModule(_TrainLoaderMixin, LightningDataModule):
    """scikit-learn's handwritten digits (1797 real 8x8 images, 10 classes), shipped inside the wheel: no download.

    The images (0..16 ink) are scaled to [0, 1], upsampled bilinearly to ``img_size``, repeated to 3 channels
    and normalised with mean = std = 0.5. A stratified split with its own seed (``split_seed``, independent of
    the training seed) keeps the same validation images across runs; the test stage reuses the validation split.
    Training images are shifted by up to ``max_shift * img_size`` pixels (zero-padded) when ``augment`` is set;
    never flipped (a flipped digit is another symbol).

    Args:
        img_size: side of the square model input, in pixels.
        batch_size: per-device batch size (the global batch is ``batch_size * devices * num_nodes``).
        val_fraction: fraction of the 1797 images held out for validation (stratified).
        split_seed: seed of the train/val split.
        augment: random shifts of the training images.
        max_shift: largest shift, as a fraction of ``img_size``.
        num_workers: DataLoader worker processes (0 loads in the main process; the set is in memory).
        predict_dir: folder of digit images (any size; converted to grayscale, white ink on black as in the
            training set) for ``predict``; None predicts the validation split.

    Raises:
        ConfigError: an argument outside its valid values (naming it and the range), when built.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(
            self,
            img_size: int = 32,
            batch_size: int = 64,
            val_fraction: float = 0.2,
            split_seed: int = 0,
            augment: bool = True,
            max_shift: float = 0.125,
            num_workers: int = 0,
            predict_dir: Optional[str] = None,
    ):
        super().__init__()
        check_number('img_size', img_size, 8, integer=True)  # the digits are 8x8
        check_number('batch_size', batch_size, 1, integer=True)
        check_number('val_fraction', val_fraction, 0, 1, low_open=True, high_open=True)
        check_number('split_seed', split_seed, 0, 2 ** 32 - 1, integer=True)  # scikit-learn's random_state range
        check_number('max_shift', max_shift, 0, 0.5)  # beyond half the image a shift moves the digit out
        check_number('num_workers', num_workers, 0, integer=True)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self._train = self._val = self._predict = None

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def label_names(self) -> List[str]:
        return [str(i) for i in range(10)]

    @property
    def data_config(self) -> Dict[str, Any]:
        size = self.hparams.img_size
        return dict(input_size=[3, size, size], mean=list(self.mean), std=list(self.std), interpolation='bilinear',
                    crop_pct=1.0)

    def _to_input(self, images01: torch.Tensor) -> torch.Tensor:
        """``[N, 1, h, w]`` in [0, 1] -> ``[N, 1, S, S]`` in [0, 1] (antialiased if it shrinks)."""
        size = self.hparams.img_size
        if images01.shape[-2:] != (size, size):
            images01 = F.interpolate(images01, size=(size, size), mode='bilinear', align_corners=False, antialias=True)
        return images01.clamp_(0.0, 1.0)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._train is None:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
            digits = load_digits()
            images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8]
            labels = torch.from_numpy(digits.target.astype(np.int64))
            idx_train, idx_val = train_test_split(
                np.arange(len(labels)), test_size=self.hparams.val_fraction, random_state=self.hparams.split_seed,
                stratify=digits.target)
            images = self._to_input(images)
            pad = int(round(self.hparams.max_shift * self.hparams.img_size)) if self.hparams.augment else 0
            self._train = _DigitsSet(images[idx_train], labels[idx_train], pad)
            self._val = _DigitsSet(images[idx_val], labels[idx_val], 0)
        if stage == 'predict' and self._predict is None:
            if self.hparams.predict_dir:
                self._predict = ImageFilesPredictDataset(self.hparams.predict_dir, transform=self._predict_transform)
            else:
                self._predict = _Named(self._val, 'digits/val/')

    def _predict_transform(self, img) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img.convert('L'), dtype=np.float32) / 255.0)[None, None]
        return _normalise(self._to_input(x)[0])

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self._train)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._val)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._predict, collate_fn=collate_skipping)


def _normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01.expand(3, -1, -1) - 0.5) / 0.5


class _DigitsSet(Dataset):
    def __init__(self, images01: torch.Tensor, labels: torch.Tensor, pad: int):
        self.images, self.labels, self.pad = images01, labels, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index]  # [1, S, S]
        if self.pad:
            size = x.shape[-1]
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = F.pad(x, (self.pad,) * 4)[:, dy:dy + size, dx:dx + size]
        return _normalise(x), self.labels[index]


class _Named(Dataset):
    """Predict items ``(image, id)`` from a labelled in-memory set."""

    def __init__(self, dataset: Dataset, prefix: str):
        self.dataset, self.prefix = dataset, prefix

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], f'{self.prefix}{index}'


def _check_image_folder_args(h: Dict[str, Any]) -> None:
    """Raise ``ConfigError`` naming the first argument of :class:`ImageFolderDataModule` outside its valid values
    (timm's transforms would take most of them silently, e.g. a flip probability of 2 or an unknown crop mode as
    'center', or fail at the first batch)."""
    from timm.data import create_transform
    interpolations = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')  # timm.data.transforms' names
    check_number('img_size', h['img_size'], 1, integer=True)
    check_number('batch_size', h['batch_size'], 1, integer=True)
    check_number('eval_batch_size', h['eval_batch_size'], 1, integer=True, optional=True)
    check_number('num_workers', h['num_workers'], 0, integer=True)
    check_choice('interpolation', h['interpolation'], interpolations)
    check_choice('train_interpolation', h['train_interpolation'], interpolations + ('random',))
    check_numbers('mean', h['mean'], 3)
    check_numbers('std', h['std'], 3, 0, low_open=True)
    check_number('crop_pct', h['crop_pct'], 0, 1, low_open=True)
    check_choice('crop_mode', h['crop_mode'], ('center', 'squash', 'border'))
    check_numbers('scale', h['scale'], 2, 0, 1, low_open=True, increasing=True)
    check_numbers('ratio', h['ratio'], 2, 0, low_open=True, increasing=True)
    check_number('hflip', h['hflip'], 0, 1)
    check_number('vflip', h['vflip'], 0, 1)
    check_number('color_jitter', h['color_jitter'], 0, optional=True)
    check_number('re_prob', h['re_prob'], 0, 1)
    check_choice('re_mode', h['re_mode'], ('const', 'rand', 'pixel'))
    check_number('re_count', h['re_count'], 1, integer=True)
    names = h['class_names']
    if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
        raise ConfigError(f'class_names must be two or more distinct folder names (in label order), got '
                          f'class_names={list(names)!r}.')
    if h['auto_augment'] is not None:
        try:  # timm parses the policy string when it builds the transform (asserting on unknown parts)
            create_transform(8, is_training=True, auto_augment=h['auto_augment'])
        except Exception as e:
            raise ConfigError(f"auto_augment must be a timm policy string (e.g. 'rand-m9-mstd0.5-inc1', "
                              f"'augmix-m5-w4-d2', 'original', 'trivial'), got auto_augment={h['auto_augment']!r} "
                              f'({type(e).__name__}: {e}).') from None


class ImageFolderDataModule(_TrainLoaderMixin, LightningDataModule):
    """Images in ``<root>/<split>/<class>/<image>`` folders, with timm's train and eval transforms.

    The classes are the sub-folders of the training split (sorted), unless ``class_names`` is given.
    Missing or empty folders raise ``ValueError`` when the module is built or set up, before any training
    step; an unreadable or corrupt image is skipped (logged with its path), counted, and the count is logged
    as ``train_skipped`` / ``val_skipped`` by the model; training never stops for it.

    Transforms are ``timm.data.create_transform``: for training RandomResizedCrop(``scale``, ``ratio``), flips,
    colour jitter, ``auto_augment`` (RandAugment string) and random erasing; for evaluation a resize to
    ``img_size / crop_pct`` and a centre crop (``crop_mode``).

    Args:
        root: dataset folder holding the split folders.
        train_split: training folder name under ``root``.
        val_split: validation folder name under ``root``.
        test_split: test folder name; None reuses ``val_split``.
        predict_dir: folder of images (any layout) for ``predict``.
        class_names: class folder names in label order; None lists ``<root>/<train_split>``.
        img_size: side of the square model input.
        batch_size: per-device training batch size.
        eval_batch_size: per-device evaluation batch size (None: ``batch_size``).
        num_workers: DataLoader workers per device.
        pin_memory: page-locked host memory for faster copies to the GPU.
        interpolation: eval resize interpolation.
        train_interpolation: train crop interpolation ('random' picks bilinear or bicubic per image).
        mean: normalisation mean (RGB).
        std: normalisation std (RGB).
        crop_pct: eval centre-crop fraction.
        crop_mode: eval crop mode ('center', 'squash', 'border').
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect-ratio range.
        hflip: horizontal flip probability.
        vflip: vertical flip probability.
        color_jitter: colour jitter strength (None or 0 disables; ignored by timm when ``auto_augment`` is set).
        auto_augment: timm auto-augment string, e.g. 'rand-m9-mstd0.5-inc1' (None disables).
        re_prob: random-erasing probability.
        re_mode: random-erasing fill ('const', 'rand', 'pixel').
        re_count: random-erasing regions per image.

    Raises:
        ConfigError: an argument outside its valid values (naming it and the range or the choices), when built.
    """

    def __init__(
            self,
            root: str,
            train_split: str = 'train',
            val_split: str = 'val',
            test_split: Optional[str] = None,
            predict_dir: Optional[str] = None,
            class_names: Optional[List[str]] = None,
            img_size: int = 224,
            batch_size: int = 128,
            eval_batch_size: Optional[int] = None,
            num_workers: int = 4,
            pin_memory: bool = True,
            interpolation: str = 'bicubic',
            train_interpolation: str = 'random',
            mean: Tuple[float, float, float] = (0.485, 0.456, 0.406),
            std: Tuple[float, float, float] = (0.229, 0.224, 0.225),
            crop_pct: float = 0.875,
            crop_mode: str = 'center',
            scale: Tuple[float, float] = (0.08, 1.0),
            ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
            hflip: float = 0.5,
            vflip: float = 0.0,
            color_jitter: Optional[float] = 0.4,
            auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1',
            re_prob: float = 0.25,
            re_mode: str = 'pixel',
            re_count: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        _check_image_folder_args(self.hparams)
        self.batch_size = batch_size
        self._classes: Optional[List[str]] = list(class_names) if class_names else None
        self._datasets: Dict[str, Dataset] = {}

    def _split_dir(self, split: str) -> str:
        return os.path.join(self.hparams.root, split)

    @property
    def classes(self) -> List[str]:
        if self._classes is None:
            self._classes = _find_classes(self._split_dir(self.hparams.train_split), 'root/train_split')
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label_names(self) -> List[str]:
        return list(self.classes)

    @property
    def data_config(self) -> Dict[str, Any]:
        size = self.hparams.img_size
        return dict(
            input_size=[3, size, size], mean=list(self.hparams.mean), std=list(self.hparams.std),
            interpolation=self.hparams.interpolation, crop_pct=self.hparams.crop_pct, crop_mode=self.hparams.crop_mode)

    def _transform(self, training: bool):
        from timm.data import create_transform
        h = self.hparams
        if training:
            return create_transform(
                h.img_size, is_training=True, scale=tuple(h.scale), ratio=tuple(h.ratio), hflip=h.hflip,
                vflip=h.vflip, color_jitter=h.color_jitter or None, auto_augment=h.auto_augment,
                interpolation=h.train_interpolation, mean=tuple(h.mean), std=tuple(h.std), re_prob=h.re_prob,
                re_mode=h.re_mode, re_count=h.re_count)
        return create_transform(
            h.img_size, is_training=False, interpolation=h.interpolation, mean=tuple(h.mean), std=tuple(h.std),
            crop_pct=h.crop_pct, crop_mode=h.crop_mode)

    def _dataset(self, key: str, split: str, training: bool) -> Dataset:
        if key not in self._datasets:
            samples = _scan_split(self._split_dir(split), self.classes, f'root/{key}_split')
            self._datasets[key] = ImageFileDataset(samples, self._transform(training))
            rank_zero_info(f'ImageFolderDataModule: {key} split {self._split_dir(split)!r}: {len(samples)} images, '
                           f'{self.num_classes} classes')
        return self._datasets[key]

    def setup(self, stage: Optional[str] = None) -> None:
        h = self.hparams
        if stage in (None, 'fit'):
            self._dataset('train', h.train_split, True)
        if stage in (None, 'fit', 'validate'):
            self._dataset('val', h.val_split, False)
        if stage in (None, 'test'):
            self._dataset('test', h.test_split or h.val_split, False)
        if stage == 'predict':
            if not h.predict_dir:
                raise ConfigError('predict_dir: give the folder of images to predict (--data.predict_dir PATH).')
            self._datasets['predict'] = ImageFilesPredictDataset(h.predict_dir, self._transform(False))

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self._datasets['train'], collate_fn=collate_skipping)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._datasets['val'], self.hparams.eval_batch_size, collate_skipping)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._datasets['test'], self.hparams.eval_batch_size, collate_skipping)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._datasets['predict'], self.hparams.eval_batch_size, collate_skipping)
