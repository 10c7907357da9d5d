"""The demo's limits on what a user may reach: typed paths stay inside configured roots; uploads are bounded.

A typed path is resolved (symlinks followed, `..` collapsed) before it is compared with the roots, so neither
`root/../etc` nor a symlink inside a root that points out of it gets through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmrl.errors import MMRLError

DEFAULT_MAX_UPLOAD_MB = 50
"""Largest upload the app accepts, per file, in megabytes."""
MAX_UPLOAD_FILES = 64
"""Most files one upload may hold."""


class PathRefused(MMRLError):
    """A typed path that lies outside every configured root (or does not exist)."""


@dataclass(frozen=True)
class Roots:
    """The folders a user may point the app at (run folders, dataset folders, checkpoints, sources)."""

    folders: tuple[Path, ...] = field(default_factory=tuple)
    """Resolved absolute folders; a path is allowed when it resolves inside one of them."""

    @classmethod
    def of(cls, folders: Sequence[str | Path]) -> Roots:
        """Roots from user-given folders; each must exist (a clear error names the first that does not)."""
        resolved = []
        for folder in folders:
            p = Path(folder).expanduser()
            if not p.is_dir():
                raise MMRLError(f"--root {p} is not an existing folder")
            resolved.append(p.resolve())
        return cls(tuple(resolved))

    def resolve(self, typed: str, what: str = "path") -> Path:
        """The existing path `typed` resolves to, if it lies inside a root; `PathRefused` naming it otherwise."""
        text = (typed or "").strip()
        if not text:
            raise PathRefused(f"type a {what}")
        if "\x00" in text:
            raise PathRefused(f"{what} {text!r} holds a NUL byte")
        if not self.folders:
            raise PathRefused(f"no folders are open to this app; start it with --root FOLDER to allow {what}s")
        raw = Path(text).expanduser()
        candidates = [raw] if raw.is_absolute() else [root / raw for root in self.folders]
        for candidate in candidates:
            real = candidate.resolve()
            if any(real == root or root in real.parents for root in self.folders) and real.exists():
                return real
        allowed = ", ".join(str(f) for f in self.folders)
        raise PathRefused(f"{what} {text!r} is not an existing path inside the allowed folders ({allowed})")


def check_uploads(paths: Sequence[str | Path], max_mb: float) -> list[Path]:
    """The uploaded files as paths, after checking their count and sizes; an error names the first too large."""
    files = [Path(p) for p in paths]
    if len(files) > MAX_UPLOAD_FILES:
        raise MMRLError(f"{len(files)} files uploaded; at most {MAX_UPLOAD_FILES} per upload")
    for f in files:
        size_mb = f.stat().st_size / 2**20
        if size_mb > max_mb:
            raise MMRLError(f"upload {f.name} is {size_mb:.1f} MB; the limit is {max_mb:g} MB")
    return files


__all__ = ["DEFAULT_MAX_UPLOAD_MB", "MAX_UPLOAD_FILES", "PathRefused", "Roots", "check_uploads"]
