"""Tests of ``wsgi-memopt settings`` and of ``--set``: every value with its source, secrets
hidden, names normalised, unknown names refused with the settings' own suggestion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.cli import run_cli

from wsgi_memopt.cli.common import UsageError
from wsgi_memopt.cli.settings import load_settings
from wsgi_memopt.settings import Settings, SettingsError


def test_settings_shows_every_value_and_its_source(app_dir: Path) -> None:
    result = run_cli(
        "settings",
        "--set",
        "cache_max_mb=5",
        app_dir=app_dir,
        env={"WSGI_MEMOPT_CACHE_TTL_S": "60", "WSGI_MEMOPT_API_TOKEN": "s3cr3t"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(Settings.NAMES)
    assert re.search(r"^cache_ttl_s +=\s60 +\(env\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^cache_max_mb +=\s5 +\(explicit\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^cache_max_items +=\s500 +\(default\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^api_token += <hidden> +\(env\)$", result.stdout, re.MULTILINE)
    assert "s3cr3t" not in result.stdout


def test_settings_json(app_dir: Path) -> None:
    result = run_cli(
        "settings",
        "--json",
        "--set",
        "cache_statuses=200,301",
        app_dir=app_dir,
        env={"WSGI_MEMOPT_CACHE_TTL_S": "60"},
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["cache_ttl_s"] == {"value": 60.0, "source": "env"}
    assert values["cache_statuses"] == {"value": [200, 301], "source": "explicit"}
    assert values["api_token"] == {"value": None, "source": "default"}
    assert values["cache_max_mb"] == {"value": 25.0, "source": "default"}


def test_set_names_are_normalised_and_parsed() -> None:
    settings = load_settings(["Cache-Max-MB=5", "cache_paths=/a/*, /b/*"])
    assert settings.cache_max_mb == 5.0
    assert settings.cache_paths == ("/a/*", "/b/*")
    assert settings.api_token is None
    assert settings.source_of("cache_max_mb") == "explicit"
    with pytest.raises(SettingsError, match="api_token"):
        load_settings(["api_token="])  # an empty token is a mistake, not "no token"


def test_set_wins_over_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGI_MEMOPT_CACHE_MAX_MB", "7")
    monkeypatch.setenv("WSGI_MEMOPT_CACHE_TTL_S", "60")
    settings = load_settings(["cache_max_mb=5"])
    assert (settings.cache_max_mb, settings.source_of("cache_max_mb")) == (5.0, "explicit")
    assert (settings.cache_ttl_s, settings.source_of("cache_ttl_s")) == (60.0, "env")


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "cache_max_mbb=1",
            r"setting cache_max_mbb \(from --set cache_max_mbb=1\): .*"
            r"there is no such setting; did you mean 'cache_max_mb'\?",
        ),
        # 'prefix' and 'environ' are parameters of Settings.from_env, not settings.
        ("prefix=X_", r"setting prefix \(from --set prefix=X_\): .*there is no such setting"),
        ("environ=x", r"setting environ \(from --set environ=x\): .*there is no such setting"),
    ],
    ids=["misspelt", "from-env-parameter", "from-env-mapping"],
)
def test_set_refuses_unknown_names(assignment: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings([assignment])


@pytest.mark.parametrize("assignment", ["cache_max_mb", "=5", " =5"])
def test_set_needs_a_name_and_a_value(assignment: str) -> None:
    with pytest.raises(UsageError, match="--set expects NAME=VALUE"):
        load_settings([assignment])
