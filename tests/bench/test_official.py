"""bench.official: official peers are named official:<family>/<model> and need a root of official checkouts."""
import sys
import types

import pytest
import torch.nn as nn

from bench import official


def test_bad_names_and_roots_are_clear(monkeypatch):
    monkeypatch.delenv(official.ROOT_ENV, raising=False)
    with pytest.raises(ValueError, match=official.ROOT_ENV):
        official.official_root()
    with pytest.raises(ValueError, match='official:<family>/<model>'):
        official.build('official:agent_swin_tiny')
    with pytest.raises(ValueError, match='no official peer module'):
        official.build('official:nosuchfamily/model')


def test_build_goes_through_the_family_module(monkeypatch):
    module = types.ModuleType('bench.official_fake')
    module.NAMES = ('fake_tiny',)
    module.build = lambda name, num_classes=1000, drop_path_rate=0.: nn.Linear(3, num_classes)
    monkeypatch.setitem(sys.modules, 'bench.official_fake', module)
    assert official.is_official('official:fake/fake_tiny') and not official.is_official('fake_tiny')
    assert official.build('official:fake/fake_tiny', num_classes=7).out_features == 7
    with pytest.raises(ValueError, match="builds \\['fake_tiny'\\]"):
        official.build('official:fake/fake_small')
