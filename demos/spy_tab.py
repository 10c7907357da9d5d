"""The Spy game tab: play one game of Who is the spy (Vision-Zero) with the loaded model and step through it.

The game is played in one go by `games.spy.SpyProducer` (clue rounds, then the judge's votes, exactly as a
training step plays it), then shown turn by turn: what each player sees (the spy's picture is marked), the
clues, the votes, and at the end the rewards and the role advantages (`SpyProducer`'s role baselines, started
fresh for this one game). "Next turn" reveals one more turn; "Play the rest" reveals them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from demos.context import DemoContext
from demos.model_tab import DEFAULT_MODEL, load_model
from demos.tasks_tab import error_text
from mmrl.config import RunConfig
from mmrl.config_tools import load_config

PAIR_KINDS = ("scene", "chart", "photo")
SPY_MARK = (200, 30, 30)


def game_config(kind: str, seed: int, photo_folder: str = "") -> RunConfig:
    """A one-game spy config: 4 players, 2 clue rounds, a judge voting 4 times, small pictures (as
    configs/spy_tiny.yaml)."""
    overrides = [
        "game.name=spy",
        "game.n_players=4",
        "game.clue_rounds=2",
        "game.games_per_step=1",
        "game.decision_mode=judge",
        "game.decision_samples=4",
        "game.clue_min_new_tokens=0",
        "game.decision_min_new_tokens=0",
        f"game.pairs.kind={kind}",
        "game.pairs.size=[160,120]",
        "model.max_pixels=50176",
        "rollout.max_new_tokens=32",
        "rollout.max_prompt_tokens=4096",
        "rollout.temperature=0.8",
        f"data.seed={int(seed)}",
    ]
    if photo_folder:
        overrides.append(f"game.pairs.photo_folder={photo_folder}")
    return load_config(RunConfig, None, overrides)


def play_one(ctx: DemoContext, kind: str, seed: int, photo_folder: str = "") -> Any:
    """Play one game with the app's model (the tiny one is loaded first if none is); returns the `Game`."""
    from games.spy import SpyProducer
    from mmrl.rollout import make_engine

    if ctx.model is None:
        load_model(ctx, DEFAULT_MODEL)
    cfg = game_config(kind, seed, photo_folder)
    loaded = ctx.model
    with ctx.model_lock:
        cfg.model = dataclasses.replace(loaded.model_cfg, max_pixels=cfg.model.max_pixels)
        producer = SpyProducer(cfg, loaded.processor)
        engine = make_engine(cfg.rollout, loaded.model, loaded.processor, seed=int(seed))
        games, _ = producer.play(engine, 0, 1)
        producer._clue_advantages(games)  # the role advantages, exactly as a training step computes them
    return games[0]


def marked(picture: Image.Image, label: str, spy: bool) -> Image.Image:
    """The picture with a caption strip; the spy's gets a red frame."""
    framed = ImageOps.expand(picture.convert("RGB"), border=6, fill=SPY_MARK if spy else (255, 255, 255))
    strip = Image.new("RGB", (framed.width, 22), SPY_MARK if spy else (235, 235, 235))
    ImageDraw.Draw(strip).text((6, 5), label, fill=(255, 255, 255) if spy else (20, 20, 20))
    out = Image.new("RGB", (framed.width, framed.height + strip.height), (255, 255, 255))
    out.paste(framed, (0, 0))
    out.paste(strip, (0, framed.height))
    return out


def turns_of(game: Any) -> list[str]:
    """The game as lines, one per turn: clue turns by round and seat, then the votes."""
    lines = []
    for t in game.clues:
        who = f"Player {t.seat} ({'spy' if t.role == 'spy' else 'civilian'})"
        clue = t.clue if t.clue is not None else "(no clue: the reply held no \\boxed{...})"
        lines.append(f"**Round {t.round}, {who}:** {clue}  \n<small>reply: `{_short(t.completion.text)}`</small>")
    for i, t in enumerate(game.decisions, 1):
        vote = t.vote
        said = "N/A" if vote.kind == "abstain" else (f"player {vote.player}" if vote.kind == "player" else "invalid")
        lines.append(f"**Vote {i} ({t.role}):** {said}  \n<small>reply: `{_short(t.completion.text)}`</small>")
    return lines


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= limit else flat[:limit] + "…"


def outcome_table(game: Any) -> pd.DataFrame:
    """Per player: role, clue reward, role advantage (mean over the player's clue turns)."""
    rows = []
    for seat in range(1, game.n_players + 1):
        turns = [t for t in game.clues if t.seat == seat]
        adv = [t.advantage for t in turns if t.advantage is not None]
        reward = float(game.clue_rewards[seat - 1]) if game.clue_rewards is not None else float("nan")
        rows.append([seat, game.role(seat), round(reward, 4), round(sum(adv) / len(adv), 4) if adv else ""])
    return pd.DataFrame(rows, columns=["player", "role", "clue reward", "role advantage"])


def build(ctx: DemoContext) -> None:
    """The Spy game tab's components and events."""
    with gr.Row():
        kind = gr.Dropdown(list(PAIR_KINDS), value="scene", label="Pair source", elem_id="spy-kind")
        folder = gr.Textbox(label="Photo pair folder (photo source; inside an allowed root)", elem_id="spy-folder")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="spy-seed")
        start = gr.Button("New game", variant="primary", elem_id="spy-start")
        cancel = gr.Button("Cancel", elem_id="spy-cancel")
    status = gr.Markdown("Plays with the model loaded in the Model tab (the tiny model if none).", elem_id="spy-status")
    with gr.Row():
        seats = gr.Gallery(
            label="What each player sees", columns=4, height="auto", object_fit="contain", elem_id="spy-seats"
        )
    with gr.Row():
        step_btn = gr.Button("Next turn", elem_id="spy-next")
        rest_btn = gr.Button("Play the rest", elem_id="spy-rest")
    transcript = gr.Markdown("", elem_id="spy-transcript")
    outcome = gr.Dataframe(label="Rewards and role advantages", interactive=False, visible=False,
                           elem_id="spy-outcome")  # fmt: skip
    game_state = gr.State(None)
    shown = gr.State(0)

    def new_game(kind_: str, typed: str, seed_: float, progress: gr.Progress = gr.Progress()) -> list:  # noqa: B008
        progress(0.1, desc="playing a game")
        try:
            photo = str(ctx.roots.resolve(typed, "photo pair folder")) if kind_ == "photo" else ""
            game = play_one(ctx, kind_, int(seed_ or 0), photo)
        except Exception as e:
            return [None, 0, error_text(e), [], "", gr.update(visible=False)]
        pictures = [
            (marked(game.image(s), f"player {s}" + (" - SPY" if s == game.spy else ""), s == game.spy), f"player {s}")
            for s in range(1, game.n_players + 1)
        ]
        note = (
            f"Game `{game.id}` on pair `{game.pair.id}` ({game.pair.kind}); the spy is player {game.spy}. "
            f"Difference: {game.pair.difference}"
        )
        return [game, 0, note, pictures, "", gr.update(visible=False)]

    def reveal(game: Any, count: int, more: int | None) -> list:
        if game is None:
            return [0, "Start a game first.", gr.update(visible=False)]
        lines = turns_of(game)
        count = len(lines) if more is None else min(len(lines), count + more)
        text = "\n\n".join(lines[:count])
        if count >= len(lines):
            counts = ", ".join(f"player {i + 1}: {c}" for i, c in enumerate(game.record()["vote_counts"]))
            text += f"\n\n---\n**Votes:** {counts}. **Outcome:** {game.outcome()}."
            return [count, text, gr.update(value=outcome_table(game), visible=True)]
        return [count, text + f"\n\n*({len(lines) - count} turns to go)*", gr.update(visible=False)]

    started = start.click(
        new_game, inputs=[kind, folder, seed], outputs=[game_state, shown, status, seats, transcript, outcome]
    )
    cancel.click(lambda: "Cancelled.", outputs=status, cancels=[started])
    step_btn.click(lambda g, c: reveal(g, c, 1), inputs=[game_state, shown], outputs=[shown, transcript, outcome])
    rest_btn.click(lambda g, c: reveal(g, c, None), inputs=[game_state, shown], outputs=[shown, transcript, outcome])


__all__ = ["PAIR_KINDS", "build", "game_config", "marked", "outcome_table", "play_one", "turns_of"]
