import dataclasses
from dataclasses import dataclass, field

import pytest

from mmrl import config as config_module
from mmrl.config import CorpusConfig, ModelConfig, describe, field_docs, load_config, save_config
from mmrl.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-6
    """Learning rate."""
    steps: int = 10
    """Optimiser steps."""
    tasks: list[str] = field(default_factory=lambda: ["a"])
    """Task names."""


@dataclass
class Outer:
    name: str = "run"
    """Run name."""
    size: tuple[int, int] = (4, 2)
    """Width and height."""
    inner: Inner = field(default_factory=Inner)
    """Inner section."""
    maybe: int | None = None
    """Optional number."""


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: exp\ninner:\n  lr: 3\n  tasks: [x, y]\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "size=[8, 6]", "maybe=3"])
    assert cfg.name == "exp"
    assert cfg.inner.lr == 3.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.tasks == ["x", "y"]
    assert cfg.inner.steps == 7
    assert cfg.size == (8, 6)
    assert cfg.maybe == 3


def test_unknown_key_in_file_names_key_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, path)
    msg = str(e.value)
    assert "inner.lrr" in msg and str(path) in msg
    assert "lr, steps, tasks" in msg and "did you mean 'lr'" in msg


def test_unknown_key_in_override():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.stepz'.*valid keys here: lr, steps, tasks"):
        load_config(Outer, None, ["inner.stepz=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(Outer, None, ["nope.x=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="'inner.steps' expects int"):
        load_config(Outer, None, ["inner.steps=fast"])
    with pytest.raises(ConfigError, match="'size' expects"):
        load_config(Outer, None, ["size=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["inner.steps"])


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.lr=0.5", "name=x"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("schema", [ModelConfig, CorpusConfig])
def test_every_field_is_documented(schema):
    docs = field_docs(schema)
    for f in dataclasses.fields(schema):
        assert docs.get(f.name), f"{schema.__name__}.{f.name} has no docstring"
    text = describe(schema)
    assert all(f.name in text for f in dataclasses.fields(schema))


def test_all_config_schemas_documented():
    schemas = [v for v in vars(config_module).values() if isinstance(v, type) and dataclasses.is_dataclass(v)]
    assert schemas
    for schema in schemas:
        missing = [f.name for f in dataclasses.fields(schema) if not field_docs(schema).get(f.name)]
        assert not missing, f"{schema.__name__} fields without docs: {missing}"
