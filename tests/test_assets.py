"""Shipped data is found in a checkout, through POINTILLIST_ASSETS for an installed backend, or not at all
with a message that says what to set."""

import pytest
from pointillist import assets
from pointillist.head.model import HeadModel


def test_checkout_assets_are_found():
    assert assets.asset_path("head_template.npz") == assets.REPO_ASSETS / "head_template.npz"


def test_the_environment_folder_comes_first(tmp_path, monkeypatch):
    (tmp_path / "generator.safetensors").write_bytes(b"x")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    assert assets.asset_path("generator.safetensors") == tmp_path / "generator.safetensors"
    assert assets.asset_path("head_template.npz") == assets.REPO_ASSETS / "head_template.npz"  # falls back


def test_an_installed_backend_without_assets_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "REPO_ASSETS", tmp_path / "missing")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="set POINTILLIST_ASSETS"):
        HeadModel.load()
