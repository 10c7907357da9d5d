"""Shared fixtures. Tests never touch the user's cache: MMRL_CACHE points into a session temp folder."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every artefact the code caches (tiny models, the default corpus) goes under one temp folder."""
    cache = tmp_path_factory.mktemp("mmrl-cache")
    old = os.environ.get("MMRL_CACHE")
    os.environ["MMRL_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("MMRL_CACHE", None)
    else:
        os.environ["MMRL_CACHE"] = old
