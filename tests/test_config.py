"""Settings in one place: one table of CRMAPI_* variables, read alike by the app, the CLI and gunicorn."""

import pathlib
import runpy

import pytest

from crmapi.config import ENVIRONMENT
from crmapi.config import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent


def configuration_table():
    """The README's Configuration table, as text."""
    text = (ROOT / 'README.md').read_text()
    start = text.index('## Configuration')
    return text[start : text.index('\n## ', start + 1)]


def test_every_setting_is_in_the_readme_configuration_table():
    table = configuration_table()
    assert [variable for _, variable, _ in ENVIRONMENT if f'`{variable}`' not in table] == []


def test_every_settings_field_has_its_variable():
    fields = set(Settings.__dataclass_fields__)
    assert fields == {name for name, _, _ in ENVIRONMENT}


def test_from_env_reads_each_variable_and_treats_empty_as_unset():
    settings = Settings.from_env(
        {
            'CRMAPI_BIND': '0.0.0.0:9000',
            'CRMAPI_WORKERS': '3',
            'CRMAPI_POOL_MAX_SIZE': '6',
            'CRMAPI_MAX_PAGE': '',
            'CRMAPI_ACCESS_LOG': 'no',
        }
    )
    assert (settings.bind, settings.workers, settings.threads, settings.max_page, settings.access_log) == (
        '0.0.0.0:9000',
        3,
        6,
        Settings.max_page,
        False,
    )
    assert Settings.from_env({'CRMAPI_THREADS': '2', 'CRMAPI_POOL_MAX_SIZE': '6'}).threads == 2


@pytest.mark.parametrize(
    'variable, raw',
    [
        ('CRMAPI_WORKERS', 'many'),
        ('CRMAPI_POOL_TIMEOUT_S', 'soon'),
        ('CRMAPI_ACCESS_LOG', 'off'),
        ('CRMAPI_HISTORY_DAYS', '0'),
    ],
)
def test_a_bad_value_names_its_variable(variable, raw):
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: raw})


def test_gunicorn_config_reads_the_same_settings_and_its_env_file_wins(tmp_path, monkeypatch):
    env_file = tmp_path / 'crmapi.env'
    env_file.write_text('# production\nCRMAPI_WORKERS=5\n')
    monkeypatch.setenv('CRMAPI_ENV_FILE', str(env_file))
    monkeypatch.setenv('CRMAPI_WORKERS', '2')
    monkeypatch.setenv('CRMAPI_BIND', '127.0.0.1:8123')
    monkeypatch.setenv('CRMAPI_POOL_MAX_SIZE', '3')
    monkeypatch.setenv('CRMAPI_STATEMENT_TIMEOUT_MS', '20000')
    monkeypatch.setenv('CRMAPI_RATE_LIMIT', '0')
    config = runpy.run_path(str(ROOT / 'deploy' / 'gunicorn.conf.py'))
    assert (config['bind'], config['workers'], config['threads'], config['timeout']) == ('127.0.0.1:8123', 5, 3, 35)
    assert config['raw_env'] == ['CRMAPI_WORKERS=5']


def test_gunicorn_config_refuses_a_bad_value_before_forking(monkeypatch):
    monkeypatch.setenv('CRMAPI_THREADS', 'four')
    monkeypatch.delenv('CRMAPI_ENV_FILE', raising=False)
    with pytest.raises(ValueError, match='CRMAPI_THREADS'):
        runpy.run_path(str(ROOT / 'deploy' / 'gunicorn.conf.py'))
