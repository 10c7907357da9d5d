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


@pytest.fixture(scope="session")
def policy(isolated_cache):
    """(model, processor) of the default config's model (tiny:qwen2.5-vl, built into the session cache), loaded once
    for every test that asks. Shared: a test only generates and scores with it, never trains or edits it."""
    # Imported here, not at the top: every test loads this file, and most need no model.
    from mmrl.config import RunConfig, load_config
    from mmrl.models import load_policy

    return load_policy(load_config(RunConfig).model, device="cpu")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """family -> (cfg, model in eval mode, processor) for qwen2-vl, qwen2.5-vl and qwen3-vl, each tiny checkpoint
    built (`build_tiny`, seed 0) and loaded once per session. Shared: a test that changes weights works on a copy
    (`copy.deepcopy`), one that takes gradients zeroes them again."""
    from mmrl.config import ModelConfig
    from mmrl.models import load_policy
    from mmrl.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for family in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl"):
        cfg = ModelConfig(path=str(build_tiny(family, root / family)))
        model, processor = load_policy(cfg, device="cpu")
        out[family] = (cfg, model.eval(), processor)
    return out
