"""`aml run`'s choice of Prefect API: a configured server wins; otherwise a temporary one."""

from __future__ import annotations

import pytest

from aml.operator import run


@pytest.fixture()
def bare(tmp_path, monkeypatch):
    """No Prefect configuration anywhere: empty PREFECT_HOME, an empty working directory."""
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def test_nothing_configured_means_a_temporary_server(bare):
    assert run._configured_api_url() is False


def test_environment_names_the_server(bare, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert run._configured_api_url() is True


def test_active_profile_names_the_server(bare, monkeypatch):
    (bare / "home").mkdir()
    (bare / "home" / "profiles.toml").write_text(
        'active = "prod"\n[profiles.prod]\nPREFECT_API_URL = "http://10.0.0.5:4200/api"\n[profiles.dev]\n')
    assert run._configured_api_url() is True
    monkeypatch.setenv("PREFECT_PROFILE", "dev")
    assert run._configured_api_url() is False


@pytest.mark.parametrize("name,text", [
    (".env", "PREFECT_API_URL=http://10.0.0.5:4200/api\n"),
    ("prefect.toml", '[api]\nurl = "http://10.0.0.5:4200/api"\n'),
    ("pyproject.toml", '[tool.prefect.api]\nurl = "http://10.0.0.5:4200/api"\n'),
])
def test_files_in_the_working_directory_name_the_server(bare, name, text):
    (bare / "cwd" / name).write_text(text)
    assert run._configured_api_url() is True
