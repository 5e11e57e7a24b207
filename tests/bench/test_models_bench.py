"""``bench.models``: a real (tiny, CPU) run, and ``--isolate`` running one process per model."""
import subprocess
import sys

import pytest
import timm
import torch

from bench import models


def _tiny_run(*extra):
    return ['--device', 'cpu', '--peers', 'nat_test', '--modes', 'inference', 'training', '--batch', '2',
            '--img-size', '64', '--repeats', '1', '--budget', '0.1', '--no-memory', '--threads', '1', *extra]


def test_one_process_tables(capsys):
    models.main(['--models', 'dinat_test', 'biformer_test', *_tiny_run()])
    out = capsys.readouterr().out
    assert out.count('# bench.models:') == 1
    assert '## inference' in out and '## training step' in out
    rows = [line for line in out.splitlines() if line.startswith('| ') and not line.startswith('| model')]
    # 3 models x 2 batches x 2 modes, each with its speed ratio to the peer (the peer's own is 1x)
    assert len(rows) == 12
    assert all(line.split('|')[5].strip().endswith('x') for line in rows)
    assert [line.split('|')[5].strip() for line in rows if line.startswith('| nat_test ')] == ['1x'] * 4


def test_isolate_runs_each_model_in_a_fresh_process(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, 'run', lambda cmd, check: calls.append(cmd))
    models.main(['--models', 'dinat_test', 'biformer_test', '--isolate', '--official-root', '/x', '--optimizer',
                 'default', *_tiny_run()])
    assert len(calls) == 2
    for cmd, name in zip(calls, ('dinat_test', 'biformer_test')):
        assert cmd[:3] == [sys.executable, '-m', 'bench.models'] and '--isolate' not in cmd
        assert cmd[cmd.index('--models') + 1:cmd.index('--peers')] == [name]
        assert cmd[cmd.index('--peers') + 1] == 'nat_test'
        for option, value in (('--batch', '2'), ('--img-size', '64'), ('--repeats', '1'), ('--budget', '0.1'),
                              ('--threads', '1'), ('--official-root', '/x'), ('--device', 'cpu'),
                              ('--compile', 'none'), ('--optimizer', 'default')):
            assert cmd[cmd.index(option) + 1] == value
        assert '--no-memory' in cmd
        assert cmd[cmd.index('--modes') + 1:cmd.index('--modes') + 3] == ['inference', 'training']


@pytest.mark.slow
def test_isolate_end_to_end(tmp_path):
    """The child processes run and print one set of tables per model."""
    result = subprocess.run([sys.executable, '-m', 'bench.models', '--models', 'dinat_test', 'nat_test', '--isolate',
                             *_tiny_run()], capture_output=True, text=True, check=True)
    assert result.stdout.count('# bench.models:') == 2


def test_amp_runs_the_step_under_autocast():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.num_classes = 3

        def forward(self, x):
            out = self.fc(x)
            seen.append(out.dtype)
            return out

    x = torch.randn(2, 4)
    for mode in ('inference', 'training'):
        for amp, dtype in (('none', torch.float32), ('bf16', torch.bfloat16)):
            models.step_fn(Probe(), x, mode, amp)()
            assert seen.pop() == dtype


def test_training_step_uses_the_cli_s_fused_adamw_unless_asked(capsys, monkeypatch):
    """The training step's AdamW is fused (as the training CLI builds it on CPUs and GPUs) unless ``--optimizer
    default``; the table's title says which."""
    built = []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, 'AdamW', lambda *a, **kw: built.append(kw.get('fused')) or adamw(*a, **kw))
    model, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    models.step_fn(model, x, 'training')()
    models.step_fn(model, x, 'training', optimizer='default')()
    assert built == [True, None]
    with pytest.raises(ValueError, match=r"optimizer must be one of \('fused', 'default'\), got optimizer='sgd'"):
        models.step_fn(model, x, 'training', optimizer='sgd')
    built.clear()
    models.main(['--models', 'dinat_test', *_tiny_run('--optimizer', 'default')])
    out = capsys.readouterr().out
    assert '## training step (train-mode forward, cross-entropy, backward, default AdamW step' in out
    assert built and set(built) == {None}


def test_compile_wraps_every_model_and_is_named(capsys, monkeypatch):
    compiled = []

    def fake_compile(model, mode=None):
        compiled.append((type(model).__name__, mode))
        return model

    monkeypatch.setattr(torch, 'compile', fake_compile)
    models.main(['--models', 'dinat_test', '--compile', 'reduce-overhead', *_tiny_run()])
    assert 'torch.compile mode reduce-overhead' in capsys.readouterr().out
    # two models (ours and the peer) x two modes x two batches, each compiled with the mode asked for
    assert len(compiled) == 8 and {mode for _, mode in compiled} == {'reduce-overhead'}


def test_amp_option_names_the_precision(capsys):
    models.main(['--models', 'dinat_test', '--amp', 'bf16', *_tiny_run()])
    assert '64px bf16 autocast' in capsys.readouterr().out


def test_officials_adds_each_twin_and_its_column(capsys, monkeypatch):
    # the twin of dinat_test stands in for an official checkout: nat_test built through the official path
    monkeypatch.setattr(models.official, 'twin', lambda m: 'official:fake/nat_test' if m == 'dinat_test' else None)
    monkeypatch.setattr(models.official, 'build', lambda name, **kw: timm.create_model(name.split('/')[1], **kw))
    models.main(['--models', 'dinat_test', 'biformer_test', '--officials', *_tiny_run()])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith('| model'))
    assert [c.strip() for c in header.split('|')[5:7]] == ['speed vs nat_test', 'speed vs official']
    rows = {line.split('|')[1].strip(): line.split('|') for line in out.splitlines()
            if line.startswith('| ') and not line.startswith('| model')}
    assert set(rows) == {'dinat_test', 'biformer_test', 'official:fake/nat_test', 'nat_test'}
    assert rows['dinat_test'][6].strip().endswith('x') and rows['biformer_test'][6].strip() == '-'


def test_official_twin_names():
    from bench import official
    assert official.twin('agent_swin_tiny') == 'official:agent/agent_swin_tiny'
    assert official.twin('ravlt_small') == 'official:ravlt/ravlt_small'
    assert official.twin('nat_tiny') is None
