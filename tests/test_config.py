import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from games import config as game_config
from mmrl import config as config_module
from mmrl.config import (
    CorpusConfig,
    DataSource,
    ModelConfig,
    NoGame,
    RunConfig,
    describe,
    field_docs,
    load_config,
    save_config,
    validate_config,
)
from mmrl.errors import ConfigError, MMRLError


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


# --------------------------------------------------------------------------------------------------
# Ranges and rules

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = [
    v
    for module in (config_module, game_config)
    for v in vars(module).values()
    if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__
]


def _is_numeric(hint) -> bool:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return all(a in (int, float) for a in args if a is not Ellipsis)
    return hint in (int, float)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_numeric_field_declares_a_readable_range_its_default_meets(schema):
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Annotated:
            base, spec = typing.get_args(hint)
            assert _is_numeric(base), f"{schema.__name__}.{f.name}: a range on a non-number"
            assert spec in describe(schema)
        else:
            assert not _is_numeric(hint), f"{schema.__name__}.{f.name} declares no valid range"
    validate_config(schema())  # every default is in range and meets the rules


def test_shipped_configs_are_valid():
    from mmrl.dataserver.server_config import load_server_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("dataserver_"):  # `mmrl serve-data` configs
            load_server_config(str(path), [])
        else:
            load_config(RunConfig, path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "config key 'train.lr' must be > 0, got -1.0"),
        ("train.lr=.nan", "config key 'train.lr' must be a finite number > 0, got nan"),
        ("train.lr=nan", "config key 'train.lr' must be a finite number > 0, got nan"),
        ("algorithm.kl_coef=.inf", "config key 'algorithm.kl_coef' must be a finite number >= 0, got inf"),
        ("train.micro_batch_size=0", "config key 'train.micro_batch_size' must be >= 1, got 0"),
        ("rollout.n=0", "config key 'rollout.n' must be >= 1, got 0"),
        ("train.steps=-5", "config key 'train.steps' must be >= 1, got -5"),
        ("sft.steps=-3", "config key 'sft.steps' must be >= 1, got -3"),
        ("sft.batch_size=0", "config key 'sft.batch_size' must be >= 1, got 0"),
        ("train.max_nonfinite_steps=0", "config key 'train.max_nonfinite_steps' must be >= 1, got 0"),
        ("rollout.top_p=0", "config key 'rollout.top_p' must be in (0, 1], got 0.0"),
        ("algorithm.clip_low=1", "config key 'algorithm.clip_low' must be in [0, 1), got 1.0"),
        ("data.sources.0.weight=-1", "config key 'data.sources.0.weight' must be >= 0, got -1.0"),
        (
            "corpus.video_size=[8, 192]",
            "config key 'corpus.video_size' must be numbers each in [16, 4096], got (8, 192)",
        ),
        ("game.pairs.min_area=0.5", "config key 'game.pairs.min_area' must be in [0, 0.5), got 0.5"),
        ("game.schedule.rho=1", "config key 'game.schedule.rho' must be in [0, 1), got 1.0"),
        ("game.n_players=2", "config key 'game.n_players' must be >= 3, got 2"),
        # rules across fields
        ("model.max_pixels=1000", "config key 'model.max_pixels' must be >= min_pixels (3136), got 1000"),
        ("rollout.min_new_tokens=33", "config key 'rollout.min_new_tokens' must be <= max_new_tokens (32), got 33"),
        ("algorithm.dual_clip=0.5", "config key 'algorithm.dual_clip' must be 0 (off) or > 1, got 0.5"),
        ("corpus.video_size=[255, 192]", "config key 'corpus.video_size' must be even in width and height"),
        ("data.sources.0.weight=0", "config key 'data.sources' must be a list with at least one source of weight > 0"),
        ("game.schedule.patience=2", "config key 'game.schedule.patience' must be 0 (off) or >= min_dwell (5), got 2"),
        ("game.pairs.n_objects=[6, 4]", "config key 'game.pairs.n_objects' must be (fewest, most) with fewest <= most"),
        ("game.name=spy", "config key 'game.decision_min_new_tokens' must be <= rollout.max_new_tokens (32) in a game"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_valid_range(override, message):
    overrides = [override]
    if override.startswith("game.") and not override.startswith("game.name"):  # a game's keys exist once named
        overrides = ["game.name=spy", "rollout.max_new_tokens=128", override]
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_values_are_checked_after_the_file_and_every_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  min_pixels: 10000\n  max_pixels: 20000\nrollout:\n  max_new_tokens: 128\n"
        "game:\n  name: spy\n  pairs:\n    n_changes: 5\n"
    )
    with pytest.raises(ConfigError, match="'game.pairs.n_changes' must be <= the fewest objects, n_objects.0. .4."):
        load_config(RunConfig, path)
    cfg = load_config(
        RunConfig, path, ["game.pairs.n_objects=[5, 6]", "model.min_pixels=30000", "model.max_pixels=40000"]
    )
    assert (cfg.game.pairs.n_changes, cfg.model.min_pixels) == (5, 30000)  # a rule broken midway is no error
    with pytest.raises(ConfigError, match="'model.max_pixels' must be >= min_pixels"):
        load_config(RunConfig, path, ["model.min_pixels=30000"])


def test_the_game_section_takes_the_schema_of_the_game_it_names(tmp_path):
    assert load_config(RunConfig).game.name == ""
    with pytest.raises(
        ConfigError, match=r"unknown config key 'game.pairs'.*set game.name first \(installed games: spy\)"
    ):
        load_config(RunConfig, None, ["game.pairs.n_changes=1"])
    cfg = load_config(RunConfig, None, ["rollout.max_new_tokens=128", "game.name=spy", "game.n_players=5"])
    assert type(cfg.game).__name__ == "SpyConfig" and cfg.game.n_players == 5 and cfg.game.pairs.n_changes == 2
    cfg = load_config(
        RunConfig, None, ["rollout.max_new_tokens=128", "game.name=spy", "game.n_players=5", "game.name="]
    )
    assert cfg.game == NoGame()  # naming no game again drops the game's keys
    path = tmp_path / "g.yaml"
    path.write_text("game:\n  name: chess\n")
    with pytest.raises(MMRLError, match="unknown game 'chess'; installed games: spy"):
        load_config(RunConfig, path)


def test_unreadable_range_is_a_programming_error():
    @dataclass
    class Broken:
        n: typing.Annotated[int, "between 1 and 3"] = 2
        """A range written the wrong way."""

    with pytest.raises(ValueError, match="unreadable range 'between 1 and 3'"):
        validate_config(Broken())


def test_describe_shows_each_range():
    text = describe(RunConfig)
    assert "  train.lr (float, > 0, default 1e-05): " in text
    assert "  rollout.top_p (float, in (0, 1], default 1.0): " in text
    assert "  corpus.video_size (tuple[int, int], each in [16, 4096], default (256, 192)): " in text
    assert "  data.sources.<i>.weight (float, >= 0, default 1.0): " in text
    assert "  game.schedule.cycle (int, >= 1, default 1): " in text


# --------------------------------------------------------------------------------------------------
# Overrides of list items and dict keys


def test_overrides_address_list_items_by_index_and_keys_of_dict_fields(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(
        "data:\n  sources:\n"
        "    - {task: image_jigsaw, params: {rows: 3, cols: 3}}\n"
        "    - {task: dominant_color, weight: 0.5}\n"
    )
    overrides = ["data.sources.0.params.rows=1", "data.sources.1.weight=2", "data.sources.1.params.palette=[red, blue]",
                 "data.sources.0.task=depth_jigsaw"]  # fmt: skip
    cfg = load_config(RunConfig, path, overrides)
    first, second = cfg.data.sources
    assert isinstance(first, DataSource) and isinstance(second, DataSource)
    assert (first.task, first.params, first.weight) == ("depth_jigsaw", {"rows": 1, "cols": 3}, 1.0)
    assert (second.task, second.params, second.weight) == ("dominant_color", {"palette": ["red", "blue"]}, 2.0)
    assert isinstance(second.weight, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.sources.1.weight=2", r"'data\.sources' has no item '1' \(valid indices: 0\)"),
        ("data.sources.first.weight=2", r"'data\.sources' has no item 'first' \(valid indices: 0\)"),
        ("data.sources.0.wieght=2", r"unknown config key 'data\.sources\.0\.wieght' \(did you mean 'weight'\?\)"),
        ("data.sources.0.weight=heavy", r"'data\.sources\.0\.weight' expects float"),
        ("data.sources.0.weight=-2", r"'data\.sources\.0\.weight' must be >= 0"),
        ("data.sources.0=x", "sets a whole section"),
        ("data.sources.0.params=3", r"'data\.sources\.0\.params' expects dict"),
        ("data.sources.0.params.grid.rows=2", r"'data\.sources\.0\.params\.grid' is not a section"),
        ("train.lr.peak=1", r"'train\.lr' is not a section"),
    ],
)
def test_bad_list_and_dict_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, None, [override])


def test_list_items_in_a_file_are_named_by_index(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  sources:\n    - {task: a}\n    - {task: b, wieght: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.sources\.1\.wieght'"):
        load_config(RunConfig, path)
