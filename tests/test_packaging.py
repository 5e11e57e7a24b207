"""The distribution ``attnzoo``: wheel and sdist contents, no file shared with Hugging Face's ``kernels``, and an
installed wheel that works beside it (in either install order) and runs the demo from its console command.

The wheel is built once per session with the standard tooling (``python -m build --no-isolation``: the sdist, then
the wheel from the sdist, so a file missing from the sdist is missing from the wheel too). Nothing is downloaded:
Hugging Face's wheel is represented by its recorded file list (``tests/fixtures/packaging``) and, for the install
tests, by a stand-in wheel with the same top-level package and its ``get_kernel`` entry point.
"""
import base64
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import zoo

REPO = Path(__file__).resolve().parents[1]
HF_FILES = REPO / 'tests' / 'fixtures' / 'packaging' / 'hf_kernels-0.17.2.files.txt'
DIST = 'attnzoo'
# folders of the repository and the import package each installs as
PACKAGE_DIRS = {'kernels': 'zoo_kernels', 'zoo': 'zoo', 'configs': 'zoo/configs'}


def _hf_kernels_files():
    return [line for line in HF_FILES.read_text().splitlines() if line and not line.startswith('#')]


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    """(wheel path, sdist path) built from this checkout."""
    out = tmp_path_factory.mktemp('dist')
    subprocess.run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out), str(REPO)],
                   check=True, capture_output=True, text=True)
    wheel, = out.glob(f'{DIST}-*.whl')
    sdist, = out.glob(f'{DIST}-*.tar.gz')
    return wheel, sdist


@pytest.fixture(scope='module')
def wheel_files(dists):
    return sorted(zipfile.ZipFile(dists[0]).namelist())


def test_version_agrees_with_metadata():
    assert importlib.metadata.version(DIST) == zoo.__version__
    assert zoo.DISTRIBUTION == DIST


def test_wheel_installs_only_our_packages(dists, wheel_files):
    assert dists[0].name.startswith(f'{DIST}-{zoo.__version__}-py3-none-any')
    top_level = {name.split('/')[0] for name in wheel_files}
    assert top_level == {'zoo', 'zoo_kernels', f'{DIST}-{zoo.__version__}.dist-info'}


def test_wheel_shares_no_file_with_hf_kernels(wheel_files):
    theirs = _hf_kernels_files()
    assert 'kernels/__init__.py' in theirs  # the fixture is the real list
    assert not set(wheel_files) & set(theirs)
    assert not {n.split('/')[0] for n in wheel_files} & {n.split('/')[0] for n in theirs}


def test_wheel_carries_every_source_and_data_file(wheel_files):
    expected = set()
    for folder, package in PACKAGE_DIRS.items():
        for path in (REPO / folder).rglob('*'):
            if path.suffix in ('.py', '.md', '.yaml') and '__pycache__' not in path.parts:
                expected.add(f'{package}/{path.relative_to(REPO / folder).as_posix()}')
    assert 'zoo/configs/demo.yaml' in expected and 'zoo_kernels/neighborhood/README.md' in expected
    assert expected <= set(wheel_files), sorted(expected - set(wheel_files))


def test_sdist_builds_from_the_repository_layout(dists):
    names = tarfile.open(dists[1]).getnames()
    root = names[0].split('/')[0]
    for path in ('pyproject.toml', 'README.md', 'kernels/neighborhood/functional.py', 'configs/demo.yaml',
                 'zoo/models/nat.py'):
        assert f'{root}/{path}' in names, path


def test_console_command_declared(wheel_files, dists):
    entry_points = zipfile.ZipFile(dists[0]).read(
        f'{DIST}-{zoo.__version__}.dist-info/entry_points.txt').decode()
    assert 'zoo-train = zoo.train.cli:console_main' in entry_points


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'{name},sha256={digest},{len(data)}'


def _stand_in_hf_kernels_wheel(folder: Path) -> Path:
    """A wheel named like Hugging Face's ``kernels`` 0.17.2 with its top-level package and ``get_kernel``."""
    files = {
        'kernels/__init__.py': b'def get_kernel(repo_id, revision=None):\n    return ("hub kernel", repo_id)\n',
        'kernels-0.17.2.dist-info/METADATA': b'Metadata-Version: 2.1\nName: kernels\nVersion: 0.17.2\n',
        'kernels-0.17.2.dist-info/WHEEL': b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                                          b'Tag: py3-none-any\n',
    }
    path = folder / 'kernels-0.17.2-py3-none-any.whl'
    record = [_record_line(name, data) for name, data in files.items()] + ['kernels-0.17.2.dist-info/RECORD,,']
    with zipfile.ZipFile(path, 'w') as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr('kernels-0.17.2.dist-info/RECORD', '\n'.join(record) + '\n')
    return path


_CHECK_BOTH = '''
import zoo, zoo_kernels, timm, torch, kernels
from kernels import get_kernel
assert get_kernel("kernels-community/activation")[0] == "hub kernel"
assert "site-packages" in zoo.__file__ and "site-packages" in zoo_kernels.__file__, (zoo.__file__, zoo_kernels.__file__)
from zoo_kernels import na2d, routed_attention
q, k, v = (torch.randn(2, 16, 16, 4, 8) for _ in range(3))
rpb = torch.zeros(4, 13, 13, requires_grad=True)
out, lse = na2d(q, k, v, kernel_size=7, dilation=2, rpb=rpb, return_lse=True)
out.sum().backward()
model = timm.create_model("nat_test", num_classes=3).eval()
assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
print("ok")
'''


@pytest.fixture(scope='module')
def isolated_env(tmp_path_factory):
    """A venv that sees this environment's torch/timm/lightning but none of the repository."""
    root = tmp_path_factory.mktemp('venv')
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / 'env')
    return root / 'env' / 'bin' / 'python', root


def _pip(python: Path, *args: str) -> None:
    subprocess.run([sys.executable, '-m', 'pip', '--python', str(python), '-q', *args],
                   check=True, capture_output=True, text=True)


def _install(python: Path, wheel: str) -> None:
    _pip(python, 'install', '--force-reinstall', '--no-deps', '--no-index', wheel)


def _run(python: Path, cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
    env.update(OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', **kw)
    result = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize('order', ['theirs_first', 'ours_first'])
def test_installed_beside_hf_kernels_both_work(order, dists, isolated_env):
    python, root = isolated_env
    ours, theirs = str(dists[0]), str(_stand_in_hf_kernels_wheel(root))
    for wheel in ([theirs, ours] if order == 'theirs_first' else [ours, theirs]):
        _install(python, wheel)
    try:
        assert _run(python, root, '-c', _CHECK_BOTH).stdout.strip().endswith('ok')
    finally:
        _pip(python, 'uninstall', '-y', DIST, 'kernels')


def test_console_command_runs_the_demo_without_the_repository(dists, isolated_env):
    python, root = isolated_env
    _install(python, str(dists[0]))
    try:
        workdir = root / 'elsewhere'
        workdir.mkdir()
        _run(python.parent / 'zoo-train', workdir, 'fit', '-c', 'demo', '--trainer.max_epochs', '1',
             '--trainer.limit_train_batches', '2', '--trainer.limit_val_batches', '1',
             '--trainer.enable_progress_bar', 'false')
        assert list((workdir / 'logs' / 'demo').glob('version_0/checkpoints/last.ckpt'))
    finally:
        _pip(python, 'uninstall', '-y', DIST)
