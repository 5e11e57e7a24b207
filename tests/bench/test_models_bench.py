"""``bench.models``: a real (tiny, CPU) run, and ``--isolate`` running one process per model."""
import subprocess
import sys

import pytest

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
    models.main(['--models', 'dinat_test', 'biformer_test', '--isolate', '--official-root', '/x', *_tiny_run()])
    assert len(calls) == 2
    for cmd, name in zip(calls, ('dinat_test', 'biformer_test')):
        assert cmd[:3] == [sys.executable, '-m', 'bench.models'] and '--isolate' not in cmd
        assert cmd[cmd.index('--models') + 1:cmd.index('--peers')] == [name]
        assert cmd[cmd.index('--peers') + 1] == 'nat_test'
        for option, value in (('--batch', '2'), ('--img-size', '64'), ('--repeats', '1'), ('--budget', '0.1'),
                              ('--threads', '1'), ('--official-root', '/x'), ('--device', 'cpu')):
            assert cmd[cmd.index(option) + 1] == value
        assert '--no-memory' in cmd
        assert cmd[cmd.index('--modes') + 1:cmd.index('--modes') + 3] == ['inference', 'training']


@pytest.mark.slow
def test_isolate_end_to_end(tmp_path):
    """The child processes run and print one set of tables per model."""
    result = subprocess.run([sys.executable, '-m', 'bench.models', '--models', 'dinat_test', 'nat_test', '--isolate',
                             *_tiny_run()], capture_output=True, text=True, check=True)
    assert result.stdout.count('# bench.models:') == 2
