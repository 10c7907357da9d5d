"""`mmrl <verb>`: the command line. Each verb documents itself with `--help`.

Errors the user can cause (bad path, corrupt media, bad config key) print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mmrl import __version__
from mmrl.errors import MMRLError

DESCRIPTION = """\
mmrl: self-supervised reinforcement-learning post-training for vision-language models
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL). Turn raw images, videos and 3D scenes into verifiable tasks
and train with GRPO. Everything runs on CPU with the embedded tiny model and default corpus.
"""

EPILOG = """\
examples:
  mmrl build-tiny --family qwen2.5-vl          build the embedded tiny model into the cache
  mmrl corpus                                  build the default corpus into the cache
  mmrl corpus --root /data/corpus seed=1       ... elsewhere, with another seed

Config overrides are `key=value` pairs (YAML values): `mmrl corpus rgbd_scenes=64`.
Set MMRL_CACHE to move the cache (default: ~/.cache/mmrl).
"""


def _add_config_args(parser: argparse.ArgumentParser, schema: type) -> None:
    from mmrl.config import describe

    parser.add_argument("--config", type=Path, help="YAML file with config values (overrides follow it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    parser.epilog = "config keys:\n" + describe(schema)


def cmd_build_tiny(args: argparse.Namespace) -> None:
    from mmrl.config import default_cache_dir
    from mmrl.models import build_tiny

    families = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"] if args.family == "all" else [args.family]
    for family in families:
        if args.out is None:
            out = default_cache_dir() / "models" / f"tiny-{family}"
        else:
            out = args.out if len(families) == 1 else args.out / f"tiny-{family}"
        start = time.perf_counter()
        path = build_tiny(family, out, seed=args.seed)
        print(f"built tiny {family} in {time.perf_counter() - start:.1f}s: {path}")


def cmd_corpus(args: argparse.Namespace) -> None:
    from mmrl.config import CorpusConfig, load_config
    from mmrl.corpus import build_default_corpus

    cfg = load_config(CorpusConfig, args.config, args.overrides)
    if args.root:
        cfg.root = str(args.root)
    start = time.perf_counter()
    corpus = build_default_corpus(cfg, progress=not args.quiet)
    print(
        f"corpus ready in {time.perf_counter() - start:.1f}s at {corpus.root}: "
        f"{len(corpus.photos)} photos, {len(corpus.videos)} videos, {len(corpus.rgbd)} RGB-D scenes"
    )


def build_parser() -> argparse.ArgumentParser:
    from mmrl.config import CorpusConfig

    parser = argparse.ArgumentParser(
        prog="mmrl", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"mmrl {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    p = verbs.add_parser(
        "build-tiny",
        help="build the embedded tiny Qwen-VL model (random init, local tokenizer)",
        description="Build a tiny random-init Qwen-VL model and its processor entirely locally: a byte-level "
        "BPE tokenizer trained on generated text with Qwen's special tokens and chat template, saved with "
        "save_pretrained. It loads back through AutoProcessor / AutoModelForImageTextToText like a real "
        "checkpoint. Configs refer to it as `model.path=tiny:<family>`.",
        formatter_class=formatter,
    )
    p.add_argument(
        "--family", default="qwen2.5-vl", choices=["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "all"], help="model family"
    )
    p.add_argument("--out", type=Path, help="output folder (default: <cache>/models/tiny-<family>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the tokenizer's training text")
    p.set_defaults(func=cmd_build_tiny)

    p = verbs.add_parser(
        "corpus",
        help="build the default corpus (photos, synthetic videos, RGB-D scenes)",
        description="Build the default corpus into a cache folder: the real photos scikit-image ships, "
        "videos synthesized from them (camera pans and zooms) and from animated procedural 3D scenes, "
        "and procedural RGB-D scenes rendered by open3d ray casting. A complete corpus is reused; an "
        "interrupted build resumes; the same seed gives byte-identical files.",
        formatter_class=formatter,
    )
    p.add_argument("--root", type=Path, help="corpus folder (same as the `root=` override)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, CorpusConfig)
    p.set_defaults(func=cmd_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MMRLError as e:
        print(f"mmrl {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmrl {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
