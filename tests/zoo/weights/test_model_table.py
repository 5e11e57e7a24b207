"""The README's model table is the output of ``python -m bench.model_table`` (params counted from the models,
GMACs / top-1 / CPU img/s from the committed ``bench/model_table.json``), for every published zoo model."""
import copy

import pytest

from bench import model_table


@pytest.fixture(scope='module')
def state():
    text = model_table.README.read_text()
    data = model_table.load_data()
    stored = set(data['models'])
    names = model_table.complete_data(data, text)
    return text, data, names, stored


def test_every_published_model_has_data(state):
    _, _, names, stored = state
    missing = sorted(set(names) - stored)
    assert not missing, f'run python -m bench.model_table to store {missing} in bench/model_table.json'


def test_readme_table_equals_script_output(state):
    text, data, names, _ = state
    expected = model_table.rewrite_readme(text, model_table.render(data, names))
    assert text == expected, 'README model table is out of date: run python -m bench.model_table'
    assert model_table.main(['--check']) == 0


def test_table_reflects_the_data(state):
    text, data, names, _ = state
    changed = copy.deepcopy(data)
    changed['models'][names[0]]['gmacs'] += 1.0
    assert model_table.rewrite_readme(text, model_table.render(changed, names)) != text
    with pytest.raises(ValueError, match='markers'):
        model_table.rewrite_readme('no table here', '')


def test_rows_parse_as_test_gmacs_reads_them(state):
    text, data, names, _ = state
    table = model_table.render(data, names)
    rows = model_table._ROW.findall(table)
    assert [r[0] for r in rows] == names
    assert all(int(r[1].replace(',', '')) > 0 and float(r[2]) > 0 for r in rows)
