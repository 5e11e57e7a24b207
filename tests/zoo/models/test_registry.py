"""`import zoo` registers our models with timm, overwrites none of timm's names and does not import Lightning."""
import json
import subprocess
import sys
import textwrap

NAT_NAMES = {
    'nat_mini', 'nat_tiny', 'nat_small', 'nat_base',
    'dinat_mini', 'dinat_tiny', 'dinat_small', 'dinat_base', 'dinat_large', 'dinat_large_384',
    'dinat_large_384_11x11', 'dinat_large_in22k', 'dinat_large_11x11_in22k',
    'dinat_s_tiny', 'dinat_s_small', 'dinat_s_base', 'dinat_s_large', 'dinat_s_large_384', 'dinat_s_large_in22k',
    'nat_test', 'dinat_test', 'dinat_s_test',
}
NAT_ISOTROPIC_NAMES = {
    'nat_isotropic_small', 'nat_isotropic_base', 'dinat_isotropic_small', 'dinat_isotropic_base',
    'vitrpb_small', 'vitrpb_base', 'nat_isotropic_test', 'dinat_isotropic_test', 'vitrpb_test',
}
BIFORMER_NAMES = {
    'biformer_tiny', 'biformer_small', 'biformer_base', 'biformer_stl', 'biformer_stl_nchw',
    'biformer_test', 'biformer_stl_test', 'biformer_stl_nchw_test',
}
FAMILIES = {'nat': NAT_NAMES, 'nat_isotropic': NAT_ISOTROPIC_NAMES, 'biformer': BIFORMER_NAMES}

_PROBE = textwrap.dedent('''
    import json, sys, warnings
    import timm
    before = set(timm.list_models())
    before_cfgs = {n: timm.models.get_pretrained_cfg(n) for n in timm.list_pretrained()}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        import zoo
    after = set(timm.list_models())
    changed = sorted(n for n, cfg in before_cfgs.items() if timm.models.get_pretrained_cfg(n) != cfg)
    print(json.dumps(dict(
        before=sorted(before), after=sorted(after), changed=changed,
        modules={m: sorted(timm.list_models(module=m)) for m in ('nat', 'nat_isotropic', 'biformer')},
        lightning=sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')),
    )))
''')


def _probe() -> dict:
    result = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_zoo_registers_without_overwriting_timm():
    probe = _probe()
    before, after = set(probe['before']), set(probe['after'])
    assert before <= after
    ours = after - before
    for module, names in FAMILIES.items():
        assert names <= ours, module
        assert not names & before, module
        assert set(probe['modules'][module]) == names, module
    assert probe['changed'] == []
    # the tiny-variant suffix is ours alone
    assert not [n for n in before if '_test' in n]
    assert not probe['lightning']
