"""Shared fixtures, each a one-liner over tests/support.py (import helpers from there, never from here)."""
from __future__ import annotations

import pytest

from tests import support


@pytest.fixture(scope="session")
def training_data():
    """The features and target the tiny models are trained on."""
    return support.training_data()


@pytest.fixture(scope="session")
def models():
    """One tiny model of each kind that real training jobs leave behind."""
    return support.train_models()


@pytest.fixture
def model_dir(tmp_path, models):
    """A clean directory: SOLUSDT (regressor pkl), BTCUSDT (raw Booster pkl), ETHUSDT (JSON only)."""
    return support.write_model_dir(tmp_path / "models", models)


@pytest.fixture(scope="session")
def _demo_template(tmp_path_factory):
    return support.demo_models(tmp_path_factory.mktemp("demo-template"))


@pytest.fixture
def demo_dir(tmp_path, _demo_template):
    """A fresh copy of the demo model directory (trained once per session)."""
    return support.copy_dir(_demo_template, tmp_path / "demo-models")


@pytest.fixture
def settings(tmp_path):
    """Settings on a fresh data dir in tmp_path, watcher off."""
    return support.make_settings(tmp_path)


@pytest.fixture
def client(settings):
    """The real app on `settings` behind a TestClient (requests count as coming from another machine)."""
    with support.make_client(settings) as c:
        yield c


@pytest.fixture
def token(client) -> str:
    """A token for `client` (the password is support.PASSWORD)."""
    return support.sign_in(client)


@pytest.fixture
def api(client):
    """`client` sending a valid token with every request."""
    return support.authorize(client)
