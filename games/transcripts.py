"""Readable transcripts of played games: JSONL records and a Markdown page with the pictures.

A transcript folder holds

    transcripts.jsonl   one game per line (`games.spy.Game.record()` plus `images`): pair, roles, every turn's
                        prompt text, completion and parsed clue / reasoning / vote, rewards and advantages
    transcripts.md      the same games for reading: pictures, roles, clues by round, votes, outcome
    images/             `{game}-original.png` (the civilians' picture) and `{game}-spy.png` (the spy's view)

The Markdown page is re-rendered from the JSONL on every write, so the two always agree.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.logging import truncate_jsonl

JSONL = "transcripts.jsonl"
MARKDOWN = "transcripts.md"
IMAGES = "images"


class TranscriptWriter:
    """Appends games to a transcript folder. `keep_through`: records of later steps already in the folder (from
    a run this one replaces or resumes) are dropped first; None drops all."""

    def __init__(self, folder: str | Path, *, keep_through: int | None = None) -> None:
        self.folder = Path(folder)
        (self.folder / IMAGES).mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.folder / JSONL, keep_through)
        self._render()

    def write(self, games: Sequence[tuple[dict[str, Any], dict[str, Image.Image]]]) -> None:
        """Append (record, pictures by name) per game: the pictures go to `images/`, linked from the record."""
        lines = []
        for record, images in games:
            links = {}
            for name, image in images.items():
                rel = f"{IMAGES}/{_safe(record['game'])}-{name}.png"
                image.save(self.folder / rel, format="PNG", compress_level=1)
                links[name] = rel
            lines.append(json.dumps({**record, "images": links}, ensure_ascii=False) + "\n")
        with open(self.folder / JSONL, "a", encoding="utf-8") as f:
            f.writelines(lines)
        self._render()

    def _render(self) -> None:
        (self.folder / MARKDOWN).write_text(render_markdown(read_transcripts(self.folder)), encoding="utf-8")


def read_transcripts(folder: str | Path) -> list[dict[str, Any]]:
    """The game records of a transcript folder, in file order."""
    path = Path(folder) / JSONL
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def render_markdown(records: Sequence[dict[str, Any]]) -> str:
    """The games as one Markdown page."""
    parts = [f"# Who is the spy? {len(records)} game{'s' if len(records) != 1 else ''}\n"]
    parts += [_game_markdown(r) for r in records]
    return "\n".join(parts)


def _game_markdown(r: dict[str, Any]) -> str:
    spy, pair = r["spy"], r["pair"]
    out = [f"## Game {r['game']} (step {r['step']})", ""]
    images = r.get("images", {})
    if images:
        out += [
            "| civilians' picture | spy's picture |",
            "|---|---|",
            f"| ![original]({images.get('original', '')}) | ![spy view]({images.get('spy', '')}) |",
            "",
        ]
    out.append(f"Pair `{pair['id']}` ({pair['kind']}, spy sees the {r['spy_view']} picture): {pair['difference']}.")
    if pair["changes"]:
        out.append("Changes: " + " ".join(_inline(c) for c in pair["changes"]))
    out += ["", "Players: " + ", ".join(_player(k, role, spy) for k, role in enumerate(r["roles"], 1)), ""]
    for round_ in sorted({c["round"] for c in r["clues"]}):
        out.append(f"**Round {round_}**")
        out.append("")
        for c in (c for c in r["clues"] if c["round"] == round_):
            clue = f'"{_inline(c["clue"])}"' if c["clue"] is not None else "*(no clue)*"
            out.append(f"- Player {c['seat']} ({c['role']}): {clue}{_score(c)}")
            if c["thinking"]:
                out.append(f"  <details><summary>reasoning</summary>{html.escape(c['thinking'])}</details>")
        out.append("")
    judge = bool(r["votes"]) and r["votes"][0]["role"] == "judge"
    out.append(f"**Votes** ({'judge, ' + str(len(r['votes'])) + ' samples' if judge else 'each civilian'})")
    out.append("")
    for i, v in enumerate(r["votes"], 1):
        who = f"sample {i}" if judge else f"Player {v['seat']}"
        said = {None: "*(invalid)*", "N/A": "N/A"}.get(v["vote"], f"Player {v['vote']}")
        mark = " ✓" if v["vote"] == spy else ""
        out.append(f"- {who}: {said}{mark}{_score(v)}")
    counts = " · ".join(f"P{k}: {c}" for k, c in enumerate(r["vote_counts"], 1))
    out += ["", f"Votes received: {counts} · N/A: {r['abstain']} · invalid: {r['invalid']}"]
    outcome = {"caught": "the spy was caught", "escaped": "the spy escaped", "no votes": "no valid votes"}
    out.append(f"Outcome: **{outcome.get(r['outcome'], r['outcome'])}** (spy: Player {spy})")
    if r["clue_rewards"] is not None:
        out.append("Clue rewards: " + ", ".join(f"P{k} {v:+.3f}" for k, v in enumerate(r["clue_rewards"], 1)))
    return "\n".join(out + [""])


def _player(seat: int, role: str, spy: int) -> str:
    return f"**{seat} spy**" if seat == spy else f"{seat} {role}"


def _score(turn: dict[str, Any]) -> str:
    adv = turn.get("advantage")
    return f" (reward {turn['reward']:+.3f}" + (f", advantage {adv:+.3f})" if adv is not None else ")")


def _inline(text: str) -> str:
    """Model text on one Markdown line: whitespace collapsed, HTML escaped."""
    return html.escape(" ".join(str(text).split()))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = ["IMAGES", "JSONL", "MARKDOWN", "TranscriptWriter", "read_transcripts", "render_markdown"]
