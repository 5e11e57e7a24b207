"""zoo.weights.safe_load: code-carrying pickles refused and never run, harmless extras allowed, clear errors for
truncated, missing and mismatched files."""
import argparse
import collections
import os
import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from unsafe_pickles import CreatesFile

import zoo  # noqa: F401  (registers the models)
from zoo.weights.export import load_training_checkpoint
from zoo.weights.safe_load import (
    CheckpointReadError,
    UnsafeCheckpointError,
    load_into,
    read_checkpoint,
    read_weights,
    select_weights,
)


def _weights():
    return {'w': torch.arange(6.).reshape(2, 3), 'b': torch.ones(2)}


@pytest.mark.parametrize('kind', ['torch.save', 'pickle-protocol-2', 'pickle-protocol-4'])
def test_code_carrying_pickle_is_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    payload = {'model': _weights(), 'extra': CreatesFile(marker)}
    if kind == 'torch.save':
        torch.save(payload, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(payload, f, protocol=int(kind[-1]))
    # the crafted file really runs code when loaded unsafely (checked on a copy, in a throwaway location)
    probe = tmp_path / 'probe.pth'
    torch.save({'x': CreatesFile(tmp_path / 'probe_ran')}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / 'probe_ran').exists()
    with pytest.raises(UnsafeCheckpointError, match=r'refused.*builtins\.open|refused.*io\.open'):
        read_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        read_weights(path)
    assert not marker.exists(), 'the pickle was executed'


def test_code_carrying_training_checkpoint_refused_by_export(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'last.ckpt'
    torch.save({'state_dict': {}, 'hyper_parameters': {'model_name': 'nat_test'}, 'x': CreatesFile(marker)}, path)
    with pytest.raises(ValueError, match='ckpt: .*refused'):
        load_training_checkpoint(str(path))
    assert not marker.exists()


def test_harmless_extras_of_official_checkpoints_load(tmp_path):
    path = tmp_path / 'official.pth'
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param])
    param.sum().backward()
    optimizer.step()  # state with exp_avg tensors and a step count
    ckpt = {
        'model': collections.OrderedDict(_weights()),
        'model_ema': _weights(),
        'optimizer': optimizer.state_dict(),
        'args': argparse.Namespace(lr=1e-3, model='nat_tiny', input_size=224, betas=(0.9, 0.999), tags={'a'}),
        'epoch': 299,
        'max_accuracy': np.float64(83.2),
        'step': np.int64(1000),
        'scaler': {'scale': np.float32(65536.0)},
        'history': np.zeros(3),
    }
    torch.save(ckpt, path)
    loaded = read_checkpoint(path)
    assert loaded['args'].model == 'nat_tiny' and loaded['max_accuracy'] == 83.2
    assert torch.equal(loaded['model']['w'], ckpt['model']['w'])
    state, entry = select_weights(loaded)
    assert entry == 'model' and torch.equal(state['b'], torch.ones(2))
    assert loaded['optimizer']['state'][0]['exp_avg'].shape == (2,)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f'full{suffix}'
    big = {'w': torch.randn(256, 256)}
    save_file(big, path) if suffix == '.safetensors' else torch.save(big, path)
    data = path.read_bytes()
    cut = tmp_path / f'cut{suffix}'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointReadError, match='truncated or corrupt'):
        read_checkpoint(cut)
    with pytest.raises(CheckpointReadError, match='no such file'):
        read_checkpoint(tmp_path / 'absent.pth')


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('not a checkpoint at all')
    with pytest.raises(CheckpointReadError):
        read_checkpoint(path)


@pytest.mark.parametrize('layout', ['zip', 'legacy', 'safetensors'])
def test_corrupt_bytes_are_a_read_error(tmp_path, layout):
    """Seeded truncations, byte flips and junk prefixes of a small checkpoint in each layout: every file either reads
    (a flip inside tensor data goes unnoticed: the formats carry no checksum) or raises ``CheckpointReadError``,
    never the ``KeyError`` / ``IndexError`` / ``struct.error`` / ``AssertionError`` of torch's legacy reader."""
    path = tmp_path / ('ok.safetensors' if layout == 'safetensors' else 'ok.pth')
    weights = {'blocks.0.weight': torch.randn(4, 3), 'blocks.0.bias': torch.arange(5)}
    if layout == 'safetensors':
        save_file(weights, path)
    else:
        torch.save({'model': weights, 'epoch': 3}, path, _use_new_zipfile_serialization=layout == 'zip')
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = collections.Counter()
    for trial in range(120):
        mutated = bytearray(data)
        kind = trial % 3
        if kind == 0:
            mutated = mutated[:int(rng.integers(len(mutated)))]
        elif kind == 1:
            for i in rng.integers(len(mutated), size=int(rng.integers(1, 9))):
                mutated[i] = int(rng.integers(256))
        else:
            mutated = bytearray([b'junk\n', b'\x80\x02', b'PK\x03\x04'][trial % 9 // 3]) + mutated[:40]
        bad = tmp_path / f'bad{path.suffix}'
        bad.write_bytes(bytes(mutated))
        try:
            read_checkpoint(bad)
            outcomes['read'] += 1
        except CheckpointReadError:
            outcomes['refused'] += 1
    assert outcomes['refused'] >= 80, outcomes
    with pytest.raises(CheckpointReadError, match='truncated or corrupt'):
        (tmp_path / 'text.pth').write_text('junk\n')
        read_checkpoint(tmp_path / 'text.pth')


def test_select_weights_sets():
    model, ema = _weights(), {k: v * 2 for k, v in _weights().items()}
    assert select_weights(model)[1] == '(top level)'
    with pytest.raises(ValueError, match='plain state dict'):
        select_weights(model, 'ema')
    wrapped = {'model': model, 'model_ema': ema, 'epoch': 3}
    assert select_weights(wrapped)[1] == 'model'
    assert torch.equal(select_weights(wrapped, 'ema')[0]['w'], ema['w'])
    assert select_weights({'state_dict': model, 'state_dict_ema': ema}, 'ema')[1] == 'state_dict_ema'
    with pytest.raises(ValueError, match=r"weights=ema: .*entries are \['epoch', 'model'\]"):
        select_weights({'model': model, 'epoch': 3}, 'ema')
    with pytest.raises(ValueError, match="must be 'model', 'ema'"):
        select_weights(wrapped, 'raw')


def test_mismatched_weights_name_the_keys():
    model = timm.create_model('nat_test')
    state = model.state_dict()
    state.pop('head.fc.bias')
    state['extra.weight'] = torch.zeros(1)
    key = next(k for k in state if k.endswith('norm.weight'))
    state[key] = torch.zeros(state[key].shape[0] + 1)
    with pytest.raises(ValueError) as info:
        load_into(model, state, what='weights.pth')
    msg = str(info.value)
    assert msg.startswith('weights.pth: ')
    assert 'missing keys [head.fc.bias]' in msg and 'extra.weight' in msg and key in msg


def test_read_checkpoint_is_os_pathlike(tmp_path):
    path = tmp_path / 'w.safetensors'
    save_file(_weights(), path)
    assert set(read_checkpoint(os.fspath(path))) == {'w', 'b'} == set(read_checkpoint(path))
