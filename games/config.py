"""The `game` section of a run config when `game.name: spy`: the game's settings, its image pairs and its
stage schedule (Vision-Zero, Wang et al. 2025, arXiv 2509.25541; docs/vision_zero.md).

Schemas only: dataclasses with one docstring per field and the valid range of each number in its annotation,
checked by `mmrl.config.validate_config`. They import nothing heavy, so `mmrl --help` can describe them; the
code that uses them is `games.pairs`, `games.schedule` and `games.spy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mmrl.config import Rule, validate_config

if TYPE_CHECKING:
    from mmrl.config import RunConfig

PairKind = Literal["scene", "chart", "photo"]
SpyView = Literal["modified", "blank"]
ScheduleMode = Literal["adaptive", "alternate", "clue", "decision"]
AccMode = Literal["mean", "majority"]

SCENE_ATTRIBUTES = ("color", "shape")
"""What a scene pair may change on an object."""
CHART_TYPES = ("bar", "line", "pie")
"""Chart kinds a chart pair draws."""
CHART_SWAPS = ("values", "colors", "labels")
"""Attribute swaps a chart pair applies."""


@dataclass
class PairParams:
    kind: PairKind = "scene"
    """Which pairs: `scene` (procedural 3D, CLEVR-like), `chart` (matplotlib bar/line/pie) or `photo` (folder)."""
    spy_view: SpyView = "modified"
    """What the spy sees: the `modified` image (released code) or a `blank` grey image (paper v2 text)."""
    size: Annotated[tuple[int, int], "[64, 4096]"] = (320, 240)
    """Width and height in pixels of generated scenes and charts (photos keep their own size)."""
    n_objects: Annotated[tuple[int, int], "[1, 10]"] = (4, 6)
    """Scenes: fewest and most objects (uniform), CLEVR-like 4-6."""
    n_changes: Annotated[int, "[1, 10]"] = 2
    """Scenes: objects replaced per pair (the paper: 2). Charts always swap two attributes once."""
    attributes: tuple[str, ...] = ("color", "shape")
    """Scenes: `color`, `shape` or both; each changed object gets a new value for every one listed (the paper:
    new shape and new colour)."""
    shadows: bool = True
    """Scenes: cast hard shadows (CLEVR has them); a reshaped object's shadow changes too."""
    min_visible: Annotated[float, "(0, 1]"] = 0.5
    """Scenes: an object may change only if at least this fraction of it is unoccluded, before and after."""
    min_area: Annotated[float, "[0, 0.5)"] = 0.004
    """Scenes: ... and only if it covers at least this fraction of the image, before and after (0.004 of
    320x240 is ~300 pixels)."""
    chart_types: tuple[str, ...] = CHART_TYPES
    """Charts: types drawn from (uniform): `bar`, `line`, `pie`."""
    chart_swaps: tuple[str, ...] = CHART_SWAPS
    """Charts: swaps drawn from (uniform among those a chart admits): `values` (two categories' values in
    one series), `colors` (two bars'/slices'/series' colours), `labels` (two category labels)."""
    photo_folder: str = ""
    """Photos: folder of (original, edited) pairs (see `games.pairs.photo_pairs` for the layouts)."""

    def __post_init__(self) -> None:
        # YAML and from_dict may give lists; store tuples so params compare equal whatever their source
        self.size = tuple(self.size)  # type: ignore[assignment]
        self.n_objects = tuple(self.n_objects)  # type: ignore[assignment]
        self.attributes = tuple(self.attributes)
        self.chart_types = tuple(self.chart_types)
        self.chart_swaps = tuple(self.chart_swaps)
        _validate(self)

    def config_rules(self) -> list[Rule]:
        fewest, most = self.n_objects
        has_folder = self.kind != "photo" or bool(self.photo_folder.strip())
        rules = [
            ("n_objects", fewest <= most, "(fewest, most) with fewest <= most"),
            ("n_changes", self.n_changes <= fewest, f"<= the fewest objects, n_objects[0] ({fewest})"),
            ("photo_folder", has_folder, "a folder of image pairs when kind is 'photo'"),
        ]
        choices = {"attributes": SCENE_ATTRIBUTES, "chart_types": CHART_TYPES, "chart_swaps": CHART_SWAPS}
        for name, options in choices.items():
            values = getattr(self, name)
            holds = bool(values) and len(set(values)) == len(values) and set(values) <= set(options)
            rules.append((name, holds, f"a non-empty list of distinct values from {list(options)}"))
        return rules


def _validate(config: Any) -> None:
    """Raise `ConfigError` naming the first field of `config` out of its range or breaking one of its rules."""
    validate_config(config)


@dataclass
class ScheduleConfig:
    mode: ScheduleMode = "adaptive"
    """Stage schedule: `adaptive` (paper Algorithm 1, EMA thresholds), `alternate` (the released code),
    or `clue` / `decision` (one stage only)."""
    rho: Annotated[float, "[0, 1)"] = 0.95
    """EMA weight of the old value for the decision accuracy and N/A rate (both start at 0)."""
    acc_to_clue: Annotated[float, "[0, 1]"] = 0.9
    """Adaptive: switch DECISION → CLUE once the accuracy EMA is at least this (and N/A low enough)."""
    na_to_clue: Annotated[float, "[0, 1]"] = 0.1
    """Adaptive: DECISION → CLUE also needs the N/A-rate EMA at most this."""
    err_to_decision: Annotated[float, "[0, 1]"] = 0.4
    """Adaptive: switch CLUE → DECISION once the error EMA, 1 − accuracy, is at least this ..."""
    na_to_decision: Annotated[float, "[0, 1]"] = 0.5
    """... or once the N/A-rate EMA is at least this."""
    min_dwell: Annotated[int, ">= 0"] = 5
    """Adaptive: steps a stage runs before a threshold switch may leave it (K_min)."""
    patience: Annotated[int, ">= 0"] = 0
    """Adaptive: force a switch after this many steps in one stage, thresholds or not (0: off; the paper
    lists 20 but its algorithm never uses it); must be 0 or at least `min_dwell`."""
    bias_correction: bool = True
    """Adaptive: compare the EMAs divided by 1 − ρ^t (t = updates so far), so the zero start does not
    delay the first switch (uncorrected, ρ = 0.95 needs 45 perfect steps to reach 0.9)."""
    cycle: Annotated[int, ">= 1"] = 1
    """Alternate: steps per stage; decision when step mod 2·cycle < cycle, else clue (code: 1)."""
    acc_mode: AccMode = "mean"
    """Per-step accuracy: `mean` (mean over games of the share of votes naming the spy) or
    `majority` (share of games whose plurality vote names the spy: the paper's argmax reading)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field out of range (also after overrides)."""
        _validate(self)

    def config_rules(self) -> list[Rule]:
        holds = self.patience == 0 or self.patience >= self.min_dwell
        return [("patience", holds, f"0 (off) or >= min_dwell ({self.min_dwell})")]


@dataclass
class SpyConfig:
    name: Literal["spy"] = "spy"
    """The game: `spy` (Who is the spy, Vision-Zero; Wang et al. 2025, arXiv 2509.25541). A game draws its
    pairs and spy seats with `data.seed` and ignores `data.sources`."""
    n_players: Annotated[int, ">= 3"] = 4
    """Players per game, the spy included (the released code: 3 civilians + 1 spy; 5 gives the paper's 4 + 1)."""
    clue_rounds: Annotated[int, ">= 1"] = 2
    """Clue rounds before the decision; in each round players speak in seat order 1..n."""
    games_per_step: Annotated[int, ">= 1"] = 8
    """Games played per optimiser step by each process (in lock-step: a turn of all games is one engine call);
    Vision-Zero's 128 games per step on 8 processes is 16."""
    decision_mode: Literal["judge", "per_civilian"] = "judge"
    """Decision stage: `judge` (the released code: one prompt with the civilians' picture and all clues,
    sampled `decision_samples` times) or `per_civilian` (the paper: each civilian votes once; the spy does not)."""
    decision_samples: Annotated[int, ">= 1"] = 8
    """Judge mode: votes sampled per game (G); they are the decision group and the clue reward's vote counts."""
    beta: Annotated[float, ">= 0"] = 0.1
    """Clue reward β: weight of the spy-versus-civilians term (paper Eq. 1)."""
    lam: Annotated[float, ">= 0"] = 0.1
    """Clue reward λ: penalty on a civilian for votes above the civilians' mean (paper Eq. 1)."""
    rae_alpha: Annotated[float, "[0, 1]"] = 0.95
    """Role-Advantage Estimation: EMA weight of the old role baselines (paper 0.95; the released code 0.9)."""
    rae_update: Literal["per_step", "per_game"] = "per_step"
    """Baseline updates: `per_step` (one per optimiser step with the global-batch means) or `per_game` (one per
    game index, averaged over processes: the released code)."""
    decision_reward: Literal["paper", "shaped"] = "paper"
    """Vote reward: `paper` (+1 spy / -0.5 N/A / -1 wrong or invalid) or `shaped` (the released code's format
    term on top); group-normalised per game either way."""
    clue_min_new_tokens: Annotated[int, ">= 0"] = 20
    """Clue turns generate at least this many tokens (the released code: 20). Both stages sample with
    `rollout.temperature`, `rollout.top_p`, `rollout.top_k` and at most `rollout.max_new_tokens` tokens (the
    trainer's log-probs use `rollout.temperature`); `rollout.n` and `rollout.min_new_tokens` are not used."""
    decision_min_new_tokens: Annotated[int, ">= 0"] = 100
    """Decision turns generate at least this many tokens (the released code: 100). Its repetition penalty 1.1
    is not applied: mmrl's engines do not support one (the trainer's log-probs would not match the sampling)."""
    transcript_games: Annotated[int, ">= 0"] = 2
    """Games of every `log.samples_every`-th step written to `<train.out_dir>/transcripts/` as JSONL and
    Markdown with their images (process 0; 0: none)."""
    pairs: PairParams = field(default_factory=PairParams)
    """Image pairs: procedural scenes, charts or a folder of photo pairs, and the spy's view."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Iterative-SPO: which stage (clue or decision) each step trains."""

    def run_rules(self, run: RunConfig) -> list[Rule]:
        """Rules tying this section to the rest of the run config (called by `RunConfig.config_rules`)."""
        limit = run.rollout.max_new_tokens
        return [
            (f"game.{name}", getattr(self, name) <= limit, f"<= rollout.max_new_tokens ({limit}) in a game")
            for name in ("clue_min_new_tokens", "decision_min_new_tokens")
        ]


__all__ = [
    "CHART_SWAPS",
    "CHART_TYPES",
    "SCENE_ATTRIBUTES",
    "AccMode",
    "PairKind",
    "PairParams",
    "ScheduleConfig",
    "ScheduleMode",
    "SpyConfig",
    "SpyView",
]
