"""Export (training checkpoint -> timm hub folder) and the bit-exact timm round trip."""
import json
import re
import subprocess
import sys

import pytest
import timm
import torch
from train_helpers import DEMO, QUIET, REPO, logger_args, run_cli, subprocess_env

import zoo  # noqa: F401
from zoo.models._flops import count_gmacs
from zoo.train.errors import ConfigError
from zoo.weights.export import export_checkpoint, load_training_checkpoint


def _card_gmacs(card):
    match = re.search(r'^\| GMACs \| ([\d.]+) at \((\d+), (\d+), (\d+)\)', card, re.M)
    assert match, card
    return float(match[1]), tuple(int(v) for v in match.groups()[1:])


def _inputs():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_export_cli_and_local_dir_roundtrip_bit_exact(trained_run, tmp_path):
    out = tmp_path / 'digits_export'
    proc = subprocess.run(
        [sys.executable, '-m', 'zoo.weights', 'export', '--ckpt', str(trained_run['last']), '--out', str(out)],
        cwd=str(REPO), env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {'model.safetensors', 'config.json', 'README.md'}

    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'nat_test'
    assert config['num_classes'] == 10
    assert config['label_names'] == [str(i) for i in range(10)]
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert config['pretrained_cfg']['mean'] == [0.5, 0.5, 0.5]
    card = (out / 'README.md').read_text()
    assert 'nat_test' in card and 'parameters' in card and 'GMACs' in card and 'val_acc' in card
    # the card counts with the README table's counter
    assert _card_gmacs(card) == (round(count_gmacs(timm.create_model('nat_test', num_classes=10), (3, 32, 32)), 4),
                                 (3, 32, 32))

    module = trained_run['cli'].model.eval()
    x = _inputs()
    with torch.no_grad():
        expected = module(x)
        by_dir = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
        by_file = timm.create_model(
            'nat_test', pretrained=True, num_classes=10,
            pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10)).eval()
        assert torch.equal(by_dir(x), expected)
        assert torch.equal(by_file(x), expected)
    assert by_dir.pretrained_cfg['label_names'] == [str(i) for i in range(10)]
    assert tuple(timm.data.resolve_data_config({}, model=by_dir)['input_size']) == (3, 32, 32)


def test_checkpoint_loads_weights_only(trained_run):
    ckpt = load_training_checkpoint(str(trained_run['last']))
    assert ckpt['hyper_parameters']['model_name'] == 'nat_test'
    assert 'val_acc' in ckpt['zoo_metrics']


def test_export_ema_weights(tmp_path):
    """With EMAWeightAveraging the checkpoint holds EMA (state_dict) and raw (current_model_state) weights."""
    cli = run_cli([
        'fit', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'ema'),
        '--trainer.max_epochs', '1', '--trainer.limit_train_batches', '3', '--trainer.limit_val_batches', '1',
        '--trainer.num_sanity_val_steps', '0', '--data.init_args.batch_size', '16',
        '--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging', '--trainer.callbacks.decay', '0.5',
    ])
    last = tmp_path / 'logs' / 'ema' / 'version_0' / 'checkpoints' / 'last.ckpt'
    ckpt = torch.load(last, map_location='cpu', weights_only=True)
    assert 'current_model_state' in ckpt
    x = _inputs()
    module = cli.model.eval()  # after fit the callback copied the EMA weights into the module
    export_checkpoint(str(last), str(tmp_path / 'ema'), ema=True, gmacs=False)
    export_checkpoint(str(last), str(tmp_path / 'raw'), ema=False, gmacs=False)
    with torch.no_grad():
        ema = timm.create_model(f'local-dir:{tmp_path / "ema"}', pretrained=True).eval()
        raw = timm.create_model(f'local-dir:{tmp_path / "raw"}', pretrained=True).eval()
        assert torch.equal(ema(x), module(x))
        raw_sd = {k[len('model.'):]: v for k, v in ckpt['current_model_state'].items() if k.startswith('model.')}
        for key, value in raw.state_dict().items():
            assert torch.equal(value, raw_sd[key]), key
        assert not torch.equal(raw(x), ema(x))


def test_export_without_ema_weights_is_a_clear_error(trained_run, tmp_path):
    with pytest.raises(ValueError, match='no EMA weights'):
        export_checkpoint(str(trained_run['last']), str(tmp_path / 'x'), ema=True)


def test_export_rejects_other_files(tmp_path):
    bad = tmp_path / 'bad.ckpt'
    torch.save({'state_dict': {}}, bad)
    with pytest.raises(ValueError, match='not a training checkpoint'):
        export_checkpoint(str(bad), str(tmp_path / 'x'))
    with pytest.raises(ValueError, match='no such file'):
        export_checkpoint(str(tmp_path / 'missing.ckpt'), str(tmp_path / 'x'))


def test_finetune_from_export_gets_a_new_head(trained_run, tmp_path):
    """``--model.pretrained <export dir>`` loads the backbone; a different class count starts a new head."""
    from zoo.train.module import ClassifierModule
    out = tmp_path / 'export'
    export_checkpoint(str(trained_run['last']), str(out), gmacs=False)
    same = ClassifierModule(model_name='nat_test', num_classes=10, pretrained=str(out))
    other = ClassifierModule(model_name='nat_test', num_classes=3, pretrained=str(out))
    trained = trained_run['cli'].model.model.state_dict()
    for key, value in same.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert other.model.get_classifier().out_features == 3
    assert torch.equal(other.model.state_dict()['patch_embed.proj.0.weight'], trained['patch_embed.proj.0.weight'])
    # an export of another architecture is named, even where the keys and shapes would fit (NAT into DiNAT);
    # the folder's weights file itself still loads into it
    with pytest.raises(ConfigError, match=r"holds 'nat_test' weights .*model_name='dinat_test'"):
        ClassifierModule(model_name='dinat_test', num_classes=10, pretrained=str(out))
    dinat = ClassifierModule(model_name='dinat_test', num_classes=10, pretrained=str(out / 'model.safetensors'))
    assert torch.equal(dinat.model.state_dict()['patch_embed.proj.0.weight'], trained['patch_embed.proj.0.weight'])


def test_card_gmacs_of_a_published_model_match_the_readme(tmp_path):
    """BiFormer-T (routing attention) exported at its native 224 px: the card states the README's GMACs."""
    model = timm.create_model('biformer_tiny')
    ckpt = tmp_path / 'biformer_tiny.ckpt'
    torch.save({'state_dict': {f'model.{k}': v for k, v in model.state_dict().items()},
                'hyper_parameters': {'model_name': 'biformer_tiny', 'num_classes': 1000}}, ckpt)
    info = export_checkpoint(str(ckpt), str(tmp_path / 'export'))
    card = (tmp_path / 'export' / 'README.md').read_text()
    gmacs, input_size = _card_gmacs(card)
    assert input_size == (3, 224, 224)
    assert gmacs == round(count_gmacs(model, input_size), 4) == round(info['gmacs'], 4)
    readme = (REPO / 'README.md').read_text()
    official = float(re.search(r'^\| `biformer_tiny` \| [\d,]+ \| ([\d.]+) \|', readme, re.M)[1])
    assert abs(gmacs / official - 1) < 1e-3, (gmacs, official)


def test_export_of_an_unregistered_model_is_a_clear_error(tmp_path):
    ckpt = tmp_path / 'x.ckpt'
    torch.save({'state_dict': {'model.w': torch.zeros(1)},
                'hyper_parameters': {'model_name': 'nat_tinny', 'num_classes': 10}}, ckpt)
    with pytest.raises(ValueError, match=r"ckpt: .*does not register.*'nat_tinny'.*Close names: .*nat_tiny"):
        export_checkpoint(str(ckpt), str(tmp_path / 'x'))
