"""`mmrl <verb>`: the command line. Each verb documents itself with `--help`.

Errors the user can cause (bad path, corrupt media, bad config key) print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
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


def _run_config(args: argparse.Namespace):
    from mmrl.config import RunConfig, load_config

    return load_config(RunConfig, args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from mmrl.grpo.trainer import train

    cfg = _run_config(args)
    if cfg.train.cold_start:
        from mmrl.sft import sft

        warm = Path(cfg.sft.out_dir) / "final"
        if not (warm / "config.json").exists():
            print(f"cold start: supervised fine-tuning into {warm}")
            sft(cfg)
        else:
            print(f"cold start: reusing {warm}")
        cfg.model.path = str(warm)
    run_dir = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # one line, also under `accelerate launch`
        print(f"run folder: {run_dir.resolve()}")


def cmd_sft(args: argparse.Namespace) -> None:
    from mmrl.sft import sft

    cfg = _run_config(args)
    run_dir = sft(cfg)
    print(f"run folder: {run_dir.resolve()} (model: {(run_dir / 'final').resolve()})")


def build_parser() -> argparse.ArgumentParser:
    from mmrl.config import CorpusConfig, RunConfig

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

    p = verbs.add_parser(
        "train",
        help="GRPO training (rollouts, rewards, advantages, policy updates, checkpoints)",
        description="Train a policy with GRPO on a weighted mixture of tasks and datasets. Writes a run folder "
        "(train.out_dir) with metrics.jsonl, TensorBoard events, a reward-curve PNG, checkpoints and the "
        "final model. Resume a killed run with `train.resume=auto`. Runs under `accelerate launch -m mmrl.cli "
        "train ...` for several processes unchanged.\n\nexample:\n  mmrl train --config configs/quickstart.yaml "
        "train.steps=40 algorithm.clip_high=0.28",
        formatter_class=formatter,
    )
    _add_config_args(p, RunConfig)
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser(
        "sft",
        help="supervised cold start on Samples' reference answers",
        description="Supervised fine-tuning on the reference completions of the configured tasks, to warm-start "
        "a policy's output format before RL (sft.* fields; data.* and model.* as for `train`). With "
        "`sft.shuffle_answers=true` it teaches the format only. The model is saved in <sft.out_dir>/final."
        "\n\nexample:\n  mmrl sft --config configs/quickstart_sft.yaml",
        formatter_class=formatter,
    )
    _add_config_args(p, RunConfig)
    p.set_defaults(func=cmd_sft)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except MMRLError as e:
        print(f"mmrl {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmrl {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


def _quiet_libraries() -> None:
    """Our own progress bars only: transformers' per-file load/save bars would interleave with them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
