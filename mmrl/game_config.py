"""The `game` section of a run config: the spy game's settings, its image pairs and its stage schedule.

Schemas only (dataclasses with one docstring per field, checked in `__post_init__`), kept in `mmrl` so
that `mmrl.config` never imports `games`; the code that uses them is `games.pairs`, `games.schedule`
and `games.spy` (Vision-Zero, Wang et al. 2025, arXiv 2509.25541; fact sheet `specs/vision_zero.md`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from mmrl.errors import ConfigError

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
    size: tuple[int, int] = (320, 240)
    """Width and height in pixels of generated scenes and charts (photos keep their own size)."""
    n_objects: tuple[int, int] = (4, 6)
    """Scenes: fewest and most objects (uniform), CLEVR-like 4-6."""
    n_changes: int = 2
    """Scenes: objects replaced per pair (the paper: 2). Charts always swap two attributes once."""
    attributes: tuple[str, ...] = ("color", "shape")
    """Scenes: `color`, `shape` or both; each changed object gets a new value for every one listed (the paper:
    new shape and new colour)."""
    shadows: bool = True
    """Scenes: cast hard shadows (CLEVR has them); a reshaped object's shadow changes too."""
    min_visible: float = 0.5
    """Scenes: an object may change only if at least this fraction of it is unoccluded, before and after."""
    min_area: float = 0.004
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
        _choice("kind", self.kind, ("scene", "chart", "photo"))
        _choice("spy_view", self.spy_view, ("modified", "blank"))
        if len(self.size) != 2 or not all(isinstance(v, int) and 64 <= v <= 4096 for v in self.size):
            raise ConfigError(f"pairs: 'size' must be (width, height) with each in 64..4096, got {self.size}")
        lo_hi = self.n_objects
        if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 1 <= lo_hi[0] <= lo_hi[1] <= 10:
            raise ConfigError(f"pairs: 'n_objects' must be (min, max) with 1 <= min <= max <= 10, got {lo_hi}")
        if not isinstance(self.n_changes, int) or not 1 <= self.n_changes <= lo_hi[0]:
            raise ConfigError(f"pairs: 'n_changes' must be in 1..min(n_objects) = 1..{lo_hi[0]}, got {self.n_changes}")
        _subset("attributes", self.attributes, SCENE_ATTRIBUTES)
        _subset("chart_types", self.chart_types, CHART_TYPES)
        _subset("chart_swaps", self.chart_swaps, CHART_SWAPS)
        if not 0.0 < self.min_visible <= 1.0:
            raise ConfigError(f"pairs: 'min_visible' must be in (0, 1], got {self.min_visible}")
        if not 0.0 <= self.min_area < 0.5:
            raise ConfigError(f"pairs: 'min_area' must be in [0, 0.5), got {self.min_area}")
        if self.kind == "photo" and not str(self.photo_folder).strip():
            raise ConfigError("pairs: 'photo_folder' must name a folder of image pairs when kind is 'photo'")


def _choice(name: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"pairs: '{name}' must be one of {list(options)}, got {value!r}")


def _subset(name: str, values: tuple[str, ...], options: Sequence[str]) -> None:
    if not values or len(set(values)) != len(values) or not set(values) <= set(options):
        raise ConfigError(f"pairs: '{name}' must be a non-empty list of distinct values from {list(options)}, "
                          f"got {list(values)}")  # fmt: skip


@dataclass
class ScheduleConfig:
    mode: ScheduleMode = "adaptive"
    """Stage schedule: `adaptive` (paper Algorithm 1, EMA thresholds), `alternate` (the released code),
    or `clue` / `decision` (one stage only)."""
    rho: float = 0.95
    """EMA weight of the old value for the decision accuracy and N/A rate (both start at 0)."""
    acc_to_clue: float = 0.9
    """Adaptive: switch DECISION → CLUE once the accuracy EMA is at least this (and N/A low enough)."""
    na_to_clue: float = 0.1
    """Adaptive: DECISION → CLUE also needs the N/A-rate EMA at most this."""
    err_to_decision: float = 0.4
    """Adaptive: switch CLUE → DECISION once the error EMA, 1 − accuracy, is at least this ..."""
    na_to_decision: float = 0.5
    """... or once the N/A-rate EMA is at least this."""
    min_dwell: int = 5
    """Adaptive: steps a stage runs before a threshold switch may leave it (K_min)."""
    patience: int = 0
    """Adaptive: force a switch after this many steps in one stage, thresholds or not (0: off; the paper
    lists 20 but its algorithm never uses it); must be 0 or at least `min_dwell`."""
    bias_correction: bool = True
    """Adaptive: compare the EMAs divided by 1 − ρ^t (t = updates so far), so the zero start does not
    delay the first switch (uncorrected, ρ = 0.95 needs 45 perfect steps to reach 0.9)."""
    cycle: int = 1
    """Alternate: steps per stage; decision when step mod 2·cycle < cycle, else clue (code: 1)."""
    acc_mode: AccMode = "mean"
    """Per-step accuracy: `mean` (mean over games of the share of votes naming the spy) or
    `majority` (share of games whose plurality vote names the spy: the paper's argmax reading)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field out of range (also after overrides)."""
        if self.mode not in get_args(ScheduleMode):
            raise ConfigError(f"schedule mode must be one of {list(get_args(ScheduleMode))}, got {self.mode!r}")
        if self.acc_mode not in get_args(AccMode):
            raise ConfigError(f"acc_mode must be one of {list(get_args(AccMode))}, got {self.acc_mode!r}")
        if not 0.0 <= self.rho < 1.0:
            raise ConfigError(f"rho must be in [0, 1), got {self.rho}")
        for name in ("acc_to_clue", "na_to_clue", "err_to_decision", "na_to_decision"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.min_dwell < 0:
            raise ConfigError(f"min_dwell must be >= 0, got {self.min_dwell}")
        if self.patience < 0 or 0 < self.patience < self.min_dwell:
            raise ConfigError(f"patience must be 0 (off) or >= min_dwell ({self.min_dwell}), got {self.patience}")
        if self.cycle < 1:
            raise ConfigError(f"cycle must be >= 1, got {self.cycle}")


@dataclass
class SpyConfig:
    name: Literal["", "spy"] = ""
    """Self-play game that produces the rollouts instead of `data.sources`: `spy` (Who is the spy,
    Vision-Zero; Wang et al. 2025, arXiv 2509.25541) or empty (the task mixture of `data`). A game draws its
    pairs and spy seats with `data.seed` and ignores `data.sources`."""
    n_players: int = 4
    """Players per game, the spy included (the released code: 3 civilians + 1 spy; 5 gives the paper's 4 + 1)."""
    clue_rounds: int = 2
    """Clue rounds before the decision; in each round players speak in seat order 1..n."""
    games_per_step: int = 8
    """Games played per optimiser step by each process (in lock-step: a turn of all games is one engine call);
    the sheet's 128 games per step on 8 processes is 16."""
    decision_mode: Literal["judge", "per_civilian"] = "judge"
    """Decision stage: `judge` (the released code: one prompt with the civilians' picture and all clues,
    sampled `decision_samples` times) or `per_civilian` (the paper: each civilian votes once; the spy does not)."""
    decision_samples: int = 8
    """Judge mode: votes sampled per game (G); they are the decision group and the clue reward's vote counts."""
    beta: float = 0.1
    """Clue reward β: weight of the spy-versus-civilians term (paper Eq. 1)."""
    lam: float = 0.1
    """Clue reward λ: penalty on a civilian for votes above the civilians' mean (paper Eq. 1)."""
    rae_alpha: float = 0.95
    """Role-Advantage Estimation: EMA weight of the old role baselines (paper 0.95; the released code 0.9)."""
    rae_update: Literal["per_step", "per_game"] = "per_step"
    """Baseline updates: `per_step` (one per optimiser step with the global-batch means) or `per_game` (one per
    game index, averaged over processes: the released code)."""
    decision_reward: Literal["paper", "shaped"] = "paper"
    """Vote reward: `paper` (+1 spy / -0.5 N/A / -1 wrong or invalid) or `shaped` (the released code's format
    term on top); group-normalised per game either way."""
    clue_min_new_tokens: int = 20
    """Clue turns generate at least this many tokens (the released code: 20). Both stages sample with
    `rollout.temperature`, `rollout.top_p`, `rollout.top_k` and at most `rollout.max_new_tokens` tokens (the
    trainer's log-probs use `rollout.temperature`); `rollout.n` and `rollout.min_new_tokens` are not used."""
    decision_min_new_tokens: int = 100
    """Decision turns generate at least this many tokens (the released code: 100). Its repetition penalty 1.1
    is not applied: mmrl's engines do not support one (the trainer's log-probs would not match the sampling)."""
    transcript_games: int = 2
    """Games of every `log.samples_every`-th step written to `<train.out_dir>/transcripts/` as JSONL and
    Markdown with their images (process 0; 0: none)."""
    pairs: PairParams = field(default_factory=PairParams)
    """Image pairs: procedural scenes, charts or a folder of photo pairs, and the spy's view."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Iterative-SPO: which stage (clue or decision) each step trains."""


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
