"""Errors a user can cause. Each names the input at fault; the CLI prints them as one line."""


class MMRLError(Exception):
    """Base class: a problem with the user's input, reported without a traceback by the CLI."""


class MediaError(MMRLError):
    """An image, video, mesh, point cloud or depth map that cannot be read (message names the file)."""


class ConfigError(MMRLError):
    """A config file or override that does not fit the config schema (message names the key)."""


class DatasetError(MMRLError):
    """A dataset record that is not valid (message names the file and line number)."""


class SkipItem(MMRLError):
    """A source item a task cannot use (image too small, video too short, depth map without valid
    points...). Generation loops skip it and count it under `reason`; they never crash on it."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        """Short, stable key for counting (e.g. `image_too_small`)."""
