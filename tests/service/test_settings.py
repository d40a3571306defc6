"""The one settings class: every LETHE_* variable typed and validated (a bad value names its variable), the
JSON settings parsed, an empty value meaning the default, and the documentation generated from the class."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, environment_help, get_settings, settings_markdown

REPO = Path(__file__).resolve().parents[2]


def test_values_are_typed_and_the_json_settings_parsed():
    settings = Settings.from_env({
        "LETHE_MAX_BODY_BYTES": "2048", "LETHE_DISPATCHER_IN_API": "0", "LETHE_AUTH_CACHE_SECONDS": "0.5",
        "LETHE_GATES_JSON": '{"forget_margin": 0.1}', "LETHE_ERASE_PARAMS_JSON": '{"rank": 4}',
        "LETHE_ARTIFACT_DIR": "~/lethe-artifacts", "LETHE_PUBLIC_BASE_URL": "https://lethe.example/",
        "LETHE_DEVICE": "", "LETHE_WORKER_METRICS_PORT": "0", "OTHER_VARIABLE": "ignored",
    })
    assert settings.max_body_bytes == 2048 and settings.dispatcher_in_api is False
    assert settings.auth_cache_seconds == 0.5 and settings.worker_metrics_port == 0
    assert settings.gates == {"forget_margin": 0.1} and settings.erase_params == {"rank": 4}
    assert settings.artifact_dir == Path("~/lethe-artifacts").expanduser()
    assert settings.public_base_url == "https://lethe.example"
    assert settings.device == "cpu"  # empty: the default
    assert Settings.from_env({}) == Settings.from_env({"LETHE_GATES_JSON": ""})


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("LETHE_MAX_BODY_BYTES", "lots", "valid integer"),
    ("LETHE_MAX_BODY_BYTES", "0", "greater than 0"),
    ("LETHE_DISPATCHER_IN_API", "maybe", "valid boolean"),
    ("LETHE_GATES_JSON", "{forget_margin: 1}", "not valid JSON"),
    ("LETHE_ERASE_PARAMS_JSON", "[1, 2]", "must be a JSON object"),
    ("LETHE_WORKER_METRICS_PORT", "70000", "less than or equal to 65535"),
    ("LETHE_DATABASE_URL", "not a url", "not a SQLAlchemy URL"),
    ("LETHE_BROKER_URL", "localhost:6379", "not a broker URL"),
    ("LETHE_PUBLIC_BASE_URL", "lethe.example", "http:// or https://"),
    ("LETHE_OUTBOX_POLL_SECONDS", "-1", "greater than or equal to 0"),
])
def test_a_bad_value_is_refused_naming_its_variable(variable, value, problem):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value) and problem in str(caught.value)


def test_the_environment_is_read_and_get_settings_is_cached(monkeypatch):
    monkeypatch.setenv("LETHE_TASK_QUEUE", "q-from-env")
    monkeypatch.setenv("LETHE_LOCK_WAIT_SECONDS", "7")
    get_settings.cache_clear()
    try:
        first = get_settings()
        assert (first.task_queue, first.lock_wait_seconds) == ("q-from-env", 7.0)
        monkeypatch.setenv("LETHE_TASK_QUEUE", "changed")
        assert get_settings() is first  # cached for the process
        monkeypatch.setenv("LETHE_LOCK_WAIT_SECONDS", "soon")
        get_settings.cache_clear()
        with pytest.raises(SettingsError, match="LETHE_LOCK_WAIT_SECONDS"):
            get_settings()
        # a mapping given explicitly is all that is read
        assert Settings.from_env({}).task_queue is None
    finally:
        get_settings.cache_clear()


def test_tests_build_their_own_and_overrides_are_validated():
    settings = Settings(database_url="sqlite:///x.db", lock_wait_seconds=5, gates={"seed": 1})
    assert settings.lock_wait_seconds == 5.0 and settings.gates == {"seed": 1}
    changed = settings.with_overrides(outbox_poll_seconds=0.05)
    assert changed.outbox_poll_seconds == 0.05 and changed.database_url == "sqlite:///x.db"
    with pytest.raises(SettingsError, match="LETHE_MAX_BODY_BYTES"):
        settings.with_overrides(max_body_bytes=-1)
    with pytest.raises(SettingsError, match="no_such_setting"):
        settings.with_overrides(no_such_setting=1)
    with pytest.raises(Exception):  # noqa: B017 - frozen: settings are not changed in place
        settings.task_queue = "other"


def test_every_variable_is_documented_from_the_class():
    names = [Settings.env_name(field) for field in Settings.model_fields]
    assert len(names) == len(set(names)) and all(name.startswith("LETHE_") for name in names)
    assert {"LETHE_ERASE_PARAMS_JSON", "LETHE_GATES_JSON", "LETHE_DATABASE_URL"} <= set(names)
    help_text = environment_help()
    markdown = settings_markdown()
    import service.settings as module

    for field, name in zip(Settings.model_fields, names, strict=True):
        description = Settings.model_fields[field].description
        assert description, f"{name} has no description"
        assert name in help_text and name in markdown and name in module.__doc__
    assert (REPO / "docs" / "settings.md").read_text() == markdown, \
        "docs/settings.md is stale: python -m service.settings --markdown > docs/settings.md"
