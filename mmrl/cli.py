"""`mmrl <verb>`: the command line. Each verb documents itself with `--help`.

Errors the user can cause (bad path, corrupt media, bad config key) print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NoReturn

from mmrl import __version__, registry
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
  mmrl play --config configs/spy_tiny.yaml     play Who-is-the-spy games and write readable transcripts

Config overrides are `key=value` pairs (YAML values): `mmrl corpus rgbd_scenes=64`.
Set MMRL_CACHE to move the cache (default: ~/.cache/mmrl).
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors (a missing argument, a value out of range) print as one line and exit 2, like the others."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    """An argparse `type`: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _check_out(path: str | Path, name: str, *, folder: bool = True) -> None:
    """Raise `MMRLError` naming the output `name` when `path` cannot be written: a folder that is an existing
    file or lies inside one, or (`folder=False`) a file that is an existing folder. Called before any work."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise MMRLError(f"{name} {path} is an existing file, not a folder")
    if not folder and path.is_dir():
        raise MMRLError(f"{name} {path} is an existing folder; give the path of a file")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise MMRLError(f"{name} {path} lies inside {blocking}, which is a file")


def _add_config_args(parser: argparse.ArgumentParser, schema: type) -> None:
    from mmrl.config import describe

    parser.add_argument("--config", type=Path, help="YAML file with config values (overrides follow it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    parser.epilog = "config keys:\n" + describe(schema)


def cmd_build_tiny(args: argparse.Namespace) -> None:
    if args.out is not None:
        _check_out(args.out, "--out")
    from mmrl.config import default_cache_dir
    from mmrl.tiny import build_tiny, parse_spec

    spec = parse_spec(args.spec)
    families = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"] if args.family == "all" else [args.family]
    for family in families:
        if args.out is None:
            out = default_cache_dir() / "models" / f"tiny-{family}"
        else:
            out = args.out if len(families) == 1 else args.out / f"tiny-{family}"
        start = time.perf_counter()
        path = build_tiny(family, out, seed=args.seed, spec=spec, overwrite=args.overwrite)
        print(f"built tiny {family} in {time.perf_counter() - start:.1f}s: {path}")


def cmd_corpus(args: argparse.Namespace) -> None:
    from mmrl.config import CorpusConfig, load_config
    from mmrl.corpus import build_default_corpus, corpus_root

    cfg = load_config(CorpusConfig, args.config, args.overrides)
    if args.root:
        cfg.root = str(args.root)
    _check_out(corpus_root(cfg), "corpus root")
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
    cfg = _run_config(args)
    _check_out(cfg.train.out_dir, "train.out_dir")
    if cfg.train.cold_start:
        _check_out(cfg.sft.out_dir, "sft.out_dir")
    from mmrl.grpo.trainer import prepare_run_dir, train  # after the checks: it imports torch

    prepare_run_dir(Path(cfg.train.out_dir), cfg.train, "train.out_dir")  # before the cold start's minutes of SFT
    if cfg.train.cold_start:
        from mmrl.sft import cold_start

        cfg.model.path = str(cold_start(cfg))
    run_dir = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # one line, also under `accelerate launch`
        print(f"run folder: {run_dir.resolve()}")


def cmd_sft(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    _check_out(cfg.sft.out_dir, "sft.out_dir")
    from mmrl.sft import sft  # after the checks: it imports torch

    run_dir = sft(cfg)
    print(f"run folder: {run_dir.resolve()} (model: {(run_dir / 'final').resolve()})")


def cmd_play(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    out = args.out if args.out is not None else Path(cfg.train.out_dir) / "play"
    _check_out(out, "--out" if args.out is not None else "transcript folder")
    if not cfg.game.name:
        raise MMRLError("mmrl play needs a game: set game.name (e.g. game.name=spy) in the config or as an override")
    summary = dict(registry.game(cfg.game.name).play(cfg, out, args.games))
    played, dropped = summary.pop("games"), summary.pop("dropped")
    shares = ", ".join(f"{name.replace('_', ' ')} {value:.0%}" for name, value in summary.items())
    print(f"played {played:.0f} games ({dropped:.0f} dropped): {shares}")
    print(f"transcripts: {(out / 'transcripts.md').resolve()}")


def cmd_generate(args: argparse.Namespace) -> None:
    _check_out(args.out, "--out")
    from mmrl.generate import generate, generate_suite, parse_params, summary_line

    start = time.perf_counter()
    common = dict(params=parse_params(args.param), source=args.source, n=args.n, seed=args.seed, out=args.out,
                  preview=args.preview, overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
    if args.suite:
        if args.format != "jsonl":
            raise MMRLError("--suite writes the native jsonl format (what `mmrl eval` reads); drop --format")
        report = generate_suite(args.suite, **common)
    else:
        report = generate(args.task, fmt=args.format, **common)
    print(summary_line(report, args.out, time.perf_counter() - start))


def cmd_eval(args: argparse.Namespace) -> None:
    if args.out is not None:
        _check_out(args.out, "--out", folder=False)
    from mmrl.config import ModelConfig
    from mmrl.evaluate import evaluate, format_table

    model_cfg = ModelConfig(path=args.model, allow_download=args.allow_download)
    if args.max_pixels:
        model_cfg.max_pixels = args.max_pixels
    result, path = evaluate(
        args.model,
        args.data,
        n=args.n,
        out=args.out,
        model_cfg=model_cfg,
        progress=not args.quiet,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        max_prompt_tokens=args.max_prompt_tokens,
        seed=args.seed,
    )
    print(format_table(result))
    print(f"results: {path}")


def cmd_serve_data(args: argparse.Namespace) -> None:
    from mmrl.dataserver.server import serve
    from mmrl.dataserver.server_config import load_server_config

    cfg = load_server_config(args.config, args.overrides)
    for key in ("host", "port", "token", "workers"):  # flags win over the file and the overrides
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.token is None and os.environ.get("MMRL_DATA_TOKEN"):
        cfg.token = os.environ["MMRL_DATA_TOKEN"]
    serve(cfg)


def cmd_demo(args: argparse.Namespace) -> None:
    try:
        from demos.app import launch  # gradio loads only here: `mmrl --help` stays fast
        from demos.context import DemoContext
        from demos.safety import Roots
    except ImportError as e:
        raise MMRLError(f"mmrl demo needs the demo extra: pip install 'mmrl[demo]' ({e})") from e
    from mmrl.config import CorpusConfig, load_config

    if args.max_upload_mb <= 0:
        raise MMRLError(f"--max-upload-mb must be > 0, got {args.max_upload_mb:g}")
    corpus = load_config(CorpusConfig, args.config, args.overrides)
    ctx = DemoContext(corpus=corpus, roots=Roots.of(args.root or [Path.cwd()]), max_upload_mb=args.max_upload_mb)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.share:
        print(f"mmrl demo: serving on {args.host}: every machine that reaches it can use the app", file=sys.stderr)
    launch(ctx, host=args.host, port=args.port, share=args.share)


def build_parser() -> argparse.ArgumentParser:
    from mmrl.config import CorpusConfig, ModelConfig, RunConfig
    from mmrl.dataserver.server_config import ServerConfig

    parser = _Parser(
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
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, help="seed of the weights and of the tokenizer's training text"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even when it holds files other than an earlier tiny build (they are deleted)",
    )
    p.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a size other than the default, repeatable (e.g. --spec hidden_size=128 --spec num_layers=4); keys: "
        "the fields of mmrl.tiny.TinySpec. Train on it with model.path=<--out>",
    )
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
        "\n\nexample:\n  mmrl sft --config configs/quickstart.yaml",
        formatter_class=formatter,
    )
    _add_config_args(p, RunConfig)
    p.set_defaults(func=cmd_sft)

    p = verbs.add_parser(
        "play",
        help="play self-play games (Who is the spy) with a policy, no training, and write transcripts",
        description="Play games of the `game` section (game.name=spy: Vision-Zero's Who is the spy) with the policy "
        "model.path and the engine rollout.engine, game.games_per_step at a time in lock-step, without training. "
        "The games are those training steps 0, 1, ... would play (same seeds). Writes OUT/transcripts.jsonl (one game "
        "per line: pair, roles, every prompt and completion with its parsed clue, reasoning or vote, rewards), "
        "OUT/transcripts.md (pictures, clues by round, votes, outcome) and the pictures in OUT/images/, replacing "
        "earlier transcripts in OUT. Training writes the same transcripts to <train.out_dir>/transcripts/ every "
        "log.samples_every steps.\n\nexamples:"
        "\n  mmrl play --config configs/spy_tiny.yaml --games 4 --out runs/spy_play"
        "\n  mmrl play --config configs/spy_qwen25vl7b.yaml model.path=runs/spy_qwen25vl7b/final --games 32",
        formatter_class=formatter,
    )
    p.add_argument("--games", type=_int_at_least(1), help="games to play, >= 1 (default: game.games_per_step)")
    p.add_argument("--out", type=Path, help="transcript folder (default: <train.out_dir>/play)")
    _add_config_args(p, RunConfig)
    p.set_defaults(func=cmd_play)

    p = verbs.add_parser(
        "generate",
        help="write a dataset of Samples from a pretext task (jsonl, Hugging Face or verl format)",
        description="Generate N Samples of a pretext task into a folder. Sample i is drawn from a source item "
        "picked by numpy.random.default_rng([seed, crc32(task), i]), the same generator then making the Sample, so "
        "the same seed gives byte-identical output (and other tasks draw other items). Source items a task "
        "cannot use (image too small, video too short, "
        "unreadable file) are skipped, counted by reason and reported at the end (also in generation.json); "
        "after 50 unusable items in a row the run stops with an error. Formats: `jsonl` (samples.jsonl + "
        "media/, read by `mmrl train` and `mmrl eval`), `hf` (datasets.load_from_disk; the columns TRL's "
        "GRPOTrainer reads: prompt, images; image tasks only), `verl` (train.parquet for verl / EasyR1). "
        "Columns are documented in data/README.md."
        "\n\nexamples:\n  mmrl generate --task dominant_color --n 64 --seed 0 --out data/dc --preview 4"
        "\n  mmrl generate --task image_jigsaw --param rows=2 --param cols=2 --source ~/photos --n 1000 "
        "--out data/jig --format hf"
        "\n  mmrl generate --suite viu --n 20 --out data/viu     # VIUBench-style Easy/Hard suite, then mmrl eval",
        formatter_class=formatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help=f"registry name of the task: {', '.join(registry.task_names())}")
    what.add_argument(
        "--suite",
        choices=registry.names("suite"),
        help="a fixed evaluation suite instead of one task: `viu` (VideoSSR's VIUBench equivalent: counting, "
        "grounding per perturbation type and temporal jigsaw, Easy and Hard splits); --n samples per block, "
        "--param overrides every block (e.g. frames=16)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task parameter (repeatable); the value is parsed as YAML: --param grid=[2,3] --param answer_mode=boxed",
    )
    p.add_argument("--source", default="default", help="folder of source media, or `default` (the built-in corpus)")
    p.add_argument("--n", type=_int_at_least(1), required=True, help="number of samples to write (>= 1)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of every random choice (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "hf", "verl"], help="output format (default jsonl)")
    p.add_argument(
        "--preview",
        type=_int_at_least(0),
        default=0,
        metavar="K",
        help="PNG sheets of the first K samples in OUT/preview",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already generated in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = verbs.add_parser(
        "eval",
        help="score a model on a generated dataset, next to random-guess and best-constant baselines",
        description="Evaluate a model on a dataset written by `mmrl generate` (jsonl format): one completion per "
        "sample, generated in batches with the hf engine, scored with the sample's own task reward. Prints, per "
        "task (and, when samples carry meta.split, per task and split, per split, and per grounding perturbation "
        "and split: the `mmrl generate --suite viu` table), the count, exact accuracy (the reward's `exact` part = 1, "
        "else its `accuracy` part = 1, else reward >= 1), mean reward (mean IoU for grounding), the answer spread "
        "(distinct answers / samples) and the top share (share of the most common answer), for the model and two "
        "baselines: `random` (random answers of the right form: the task's random_answer, e.g. a random "
        "permutation, else shuffled reference answers) and `constant` (the one reply with the best mean reward on "
        "the dataset, per task). A model has learnt from the input only where it beats both. Prompts over "
        "--max-prompt-tokens are skipped and counted. Results go to --out as JSON "
        "(default <data>/eval-<model>.json).\n\nexamples:\n  mmrl eval --model tiny:qwen2.5-vl --data data/dc --n 32"
        "\n  mmrl generate --suite viu --n 20 --out data/viu"
        "\n  mmrl eval --model runs/videossr_tiny/final --data data/viu",
        formatter_class=formatter,
    )
    p.add_argument("--model", required=True, help="checkpoint folder, hub id, or tiny:<family> (e.g. tiny:qwen2.5-vl)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (samples.jsonl + media/)")
    positive = _int_at_least(1)
    p.add_argument("--n", type=positive, help="evaluate only the first N samples (file order)")
    p.add_argument("--batch-size", type=positive, default=8, help="prompts generated per batch (default 8)")
    p.add_argument("--max-new-tokens", type=positive, default=64, help="most tokens per completion (default 64)")
    p.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        help="sampling temperature; 0 decodes greedily (default)",
    )
    p.add_argument("--max-prompt-tokens", type=positive, default=4096, help="longer prompts are skipped (default 4096)")
    p.add_argument(
        "--max-pixels",
        type=_int_at_least(ModelConfig.min_pixels),
        help=f"per-image pixel budget, at least model.min_pixels = {ModelConfig.min_pixels} "
        "(default: model.max_pixels, 256*28*28)",
    )
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of sampling and of the random baseline")
    p.add_argument("--out", type=Path, help="result JSON (default <data>/eval-<model>.json)")
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let a hub id in --model download when it is not in the Hugging Face cache (off: nothing is fetched)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser(
        "serve-data",
        help="run the Syn-GRPO data server (synthesizes new samples for a training run over HTTP)",
        description="Serve a synthesizer over HTTP for `HttpBackend` clients (docs/dataserver.md): requests "
        "(seed sample + description) go into a bounded queue, `workers` threads synthesize, results wait in a "
        "bounded ready queue until a client fetches them. Endpoints: GET /health (no auth), POST /v1/requests, "
        "GET /v1/results?max=N, GET /v1/metrics. Every endpoint but /health needs `Authorization: Bearer "
        "<token>`; the token comes from --token, else MMRL_DATA_TOKEN, else the config's `token`. Binds "
        "127.0.0.1 by default and refuses any non-loopback host without a token. Prints the URL it listens on; "
        "SIGINT or SIGTERM stops it cleanly. --config is a server config (keys below) or a training config with "
        "a `dataserver:` section, whose synthesizer, workers and queues the server then runs.\n\nexamples:"
        "\n  mmrl serve-data --config configs/dataserver_identity.yaml"
        "\n  MMRL_DATA_TOKEN=s3cret mmrl serve-data --config my_outpaint.yaml --host 0.0.0.0 --port 8765 "
        "--workers 4",
        formatter_class=formatter,
    )
    p.add_argument("--host", help="address to bind (default: the config's host, 127.0.0.1)")
    p.add_argument("--port", type=_int_at_least(0), help="TCP port; 0 picks a free one (default: config, 8765)")
    p.add_argument("--token", help="bearer token clients must send (default: $MMRL_DATA_TOKEN, else config)")
    p.add_argument("--workers", type=_int_at_least(1), help="synthesizer workers, e.g. one per GPU (default: config)")
    _add_config_args(p, ServerConfig)
    p.set_defaults(func=cmd_serve_data)

    p = verbs.add_parser(
        "import-gui",
        help="import a GUI dataset (AndroidControl, AITW, GUI Odyssey, Mind2Web, BrowserGym) into a pair folder",
        description="Convert a GUI trajectory dataset, exported to local files in its published layout, into a "
        "pair folder (pairs.jsonl + media/) that `--task gui_inverse_dynamics --source DIR` reads "
        "(docs/uishift.md#importers). Coordinates become absolute pixels of each screenshot, x first; clicks "
        "without a box, with a zero-area box, a box over --max-box-coverage of the screen or a point outside its "
        "box are dropped, and every dropped pair is counted by reason.\n\nexamples:"
        "\n  mmrl import-gui --format androidcontrol --in ~/data/androidcontrol --out data/ac_pairs"
        "\n  mmrl import-gui --format aitw --in ~/data/aitw_general --out data/aitw_pairs --k 1,2,3",
        formatter_class=formatter,
    )
    p.add_argument("--format", required=True, help="androidcontrol, aitw, guiodyssey, mind2web or browsergym")
    p.add_argument("--in", dest="in_dir", required=True, type=Path, help="the dataset's folder")
    p.add_argument("--out", required=True, type=Path, help="the pair folder to write (its pairs.jsonl is replaced)")
    p.add_argument("--k", default="1", help="comma-separated action distances k: pairs (S_t, S_t+k) (default 1)")
    p.add_argument("--max-box-coverage", type=float, default=0.5, help="drop clicks whose box covers more (0.5)")
    p.add_argument("--android-scroll", default="source", help="AndroidControl scroll labels: source|finger|content")
    p.add_argument("--point-box", type=float, default=0.05, help="GUI Odyssey click box: point ± share of the side")
    p.add_argument("--dpr", type=float, default=1.0, help="Mind2Web / BrowserGym device pixel ratio (1)")
    p.add_argument("--viewport", default="1280x720", help="Mind2Web window WxH in CSS px cut from full pages")
    p.set_defaults(func=cmd_import_gui)

    p = verbs.add_parser(
        "demo",
        help="the Gradio app: see every task, try a model on it, watch a spy game, a run and a dataset",
        description="Serve the demo app (docs/demo.md) on http://127.0.0.1:PORT. Tabs: Tasks (any registered task, "
        "its parameters form, default or uploaded sources, the sample as the model sees it with its evidence, a "
        "typed answer scored next to the random and best-constant baselines), Model (sample K completions and "
        "their group advantages), Spy game, Runs (curves of a run folder, refreshed while it runs) and Datasets. "
        "Paths typed in the page must lie inside a --root folder (default: the current folder). Overrides "
        "`key=value` set the default corpus (as for `mmrl corpus`).\n\nexamples:\n  mmrl demo"
        "\n  mmrl demo --root runs --root data --port 7861",
        formatter_class=formatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int_at_least(1), default=7860, help="TCP port (default 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    p.add_argument(
        "--root",
        type=Path,
        action="append",
        help="a folder whose runs, datasets and checkpoints the page may open (repeatable; default: the current one)",
    )
    p.add_argument("--max-upload-mb", type=_non_negative_float, default=50.0, help="largest upload, MB (default 50)")
    _add_config_args(p, CorpusConfig)
    p.set_defaults(func=cmd_demo)
    add_select_parser(verbs)
    add_import_vqa_parser(verbs)
    return parser


def cmd_import_gui(args: argparse.Namespace) -> None:
    from mmrl import registry

    _check_out(args.out, "--out")
    try:
        k_values = tuple(int(v) for v in args.k.split(","))
        viewport = tuple(int(v) for v in args.viewport.lower().split("x"))
    except ValueError:
        raise MMRLError(f"--k takes integers (1,2) and --viewport WxH, got {args.k!r}, {args.viewport!r}") from None
    options = {"k_values": k_values, "max_box_coverage": args.max_box_coverage, "android_scroll": args.android_scroll,
               "point_box": args.point_box, "dpr": args.dpr, "viewport": viewport}  # fmt: skip
    start = time.perf_counter()
    # the importers belong to the task plugin; the CLI reaches them by its name, like every plugin
    report = registry.task_class("gui_inverse_dynamics").import_dataset(args.format, args.in_dir, args.out, **options)
    print(f"imported in {time.perf_counter() - start:.1f}s into {args.out}: {report.summary()}")


def add_select_parser(verbs: argparse._SubParsersAction) -> None:
    """`mmrl select`: difficulty selection (ThinkLite-VL MCTS or pass rate) over a dataset folder."""
    from mmrl.config import ModelConfig

    p = verbs.add_parser(
        "select",
        help="score a dataset's difficulty for a policy (MCTS iterations or pass rate) and keep the hard samples",
        description="Difficulty selection (ThinkLite-VL, docs/thinklite.md). `--method mcts` runs a Monte-Carlo tree "
        "search over reasoning steps with the policy for every sample and records K, the 1-based iteration of the "
        "first correct rollout (null: unsolved after --max-iterations); many samples' trees advance in lock-step, "
        "one engine call per wave. `--method passrate` samples --n whole replies per sample and records 1 - pass "
        "rate. Replies are judged by each sample's own task reward. Writes OUT/difficulty.jsonl (one line per "
        "sample, saved as it is scored: a killed run resumes where it stopped when rerun with the same OUT), "
        "OUT/selected/ (the kept samples, native format: train on it with data.sources: [{path: OUT/selected, ...}]), "
        "OUT/sweep.md (kept count per threshold) and OUT/select.json. Rerunning with other --min-k / "
        "--drop-unsolved / --max-pass-rate re-applies the rule without scoring again.\n\nexamples:"
        "\n  mmrl generate --task dominant_color --n 200 --out data/pool"
        "\n  mmrl select --data data/pool --model runs/quickstart/final --method mcts --out runs/select"
        "\n  mmrl select --data data/pool --model runs/quickstart/final --method passrate --n 16 --out runs/select_pr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    positive = _int_at_least(1)
    p.add_argument("--data", type=Path, required=True, help="dataset folder (samples.jsonl + media/)")
    p.add_argument("--model", required=True, help="the policy: checkpoint folder, hub id or tiny:<family>")
    p.add_argument("--method", choices=["mcts", "passrate"], default="mcts", help="difficulty scorer (default mcts)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reused to resume)")
    p.add_argument("--min-k", type=_int_at_least(0), default=5, help="mcts: keep solved samples with K > this (5)")
    p.add_argument("--drop-unsolved", action="store_true", help="mcts: do not keep the unsolved samples")
    p.add_argument("--max-pass-rate", type=_non_negative_float, default=0.2, help="passrate: keep rate < this (0.2)")
    p.add_argument("--max-iterations", type=positive, default=50, help="mcts: iterations before unsolved (50)")
    p.add_argument("--expansions", type=positive, default=3, help="mcts: children per expansion, k (3)")
    p.add_argument("--max-steps", type=positive, default=10, help="mcts: most reasoning steps per reply (10)")
    p.add_argument("--step-tokens", type=positive, default=64, help="mcts: most new tokens per step (64)")
    p.add_argument("--trees", type=positive, default=16, help="mcts: samples searched at once (16; 1 = one by one)")
    p.add_argument("--no-step-instruction", action="store_true",
                   help="mcts: send the sample's own prompt, without the one-step-per-line request")  # fmt: skip
    p.add_argument("--n", type=positive, default=8, help="passrate: replies per sample (8; the paper's proxy: 50)")
    p.add_argument("--temperature", type=_non_negative_float, default=1.0, help="passrate: temperature (1.0)")
    p.add_argument("--max-new-tokens", type=positive, default=256, help="passrate: most tokens per reply (256)")
    p.add_argument("--threshold", action="append", default=[], metavar="TASK=SCORE",
                   help="a reply of TASK solves it when its reward >= SCORE (default: an exact answer)")  # fmt: skip
    p.add_argument("--judge", choices=["task", "critic"], default="task",
                   help="who judges a reply: the sample's own task reward (default; exact answers) or a critic "
                        "model (--critic-model) that reads question, reference answer and reply")  # fmt: skip
    p.add_argument("--critic-model", help="--judge critic: the critic's checkpoint folder, hub id or tiny:<family>")
    p.add_argument("--critic-max-new-tokens", type=positive, default=64, help="--judge critic: verdict length (64)")
    p.add_argument(
        "--batch-size",
        type=positive,
        default=64,
        help="most sequences per generate batch, the policy's and the critic's (64)",
    )
    p.add_argument("--limit", type=positive, help="score only the first N samples of --data")
    p.add_argument("--max-prompt-tokens", type=positive, default=4096, help="longer prompts are skipped (4096)")
    p.add_argument("--max-pixels", type=_int_at_least(ModelConfig.min_pixels), help="per-image pixel budget")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the search and the sampling (0)")
    p.add_argument("--allow-download", action="store_true", help="let a hub id in --model download")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_select)


def cmd_select(args: argparse.Namespace) -> None:
    _check_out(args.out, "--out")
    thresholds = {}
    for item in args.threshold:
        task, _, value = item.partition("=")
        try:
            thresholds[task] = float(value)
        except ValueError:
            raise MMRLError(f"--threshold takes TASK=SCORE (e.g. dominant_color=0.9), got {item!r}") from None
    from mmrl.config import ModelConfig, RolloutConfig
    from mmrl.models import load_policy
    from mmrl.rollout import make_engine
    from mmrl.rollout.encode import encode_prompt
    from mmrl.selection import (
        STEP_INSTRUCTION,
        CriticVerifier,
        KeepRule,
        MCTSParams,
        PassRateParams,
        ProcessorCodec,
        TaskVerifier,
        load_pool,
        select_pool,
    )

    if (args.judge == "critic") != bool(args.critic_model):
        raise MMRLError("--judge critic needs --critic-model, and --critic-model is only used with --judge critic")
    samples = load_pool(args.data, args.limit)
    model_cfg = ModelConfig(path=args.model, allow_download=args.allow_download)
    if args.max_pixels:
        model_cfg.max_pixels = args.max_pixels
    mcts = MCTSParams(max_iterations=args.max_iterations, expansions=args.expansions, max_steps=args.max_steps,
                      step_tokens=args.step_tokens, max_trees=args.trees, seed=args.seed)  # fmt: skip
    passrate = PassRateParams(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              batch_prompts=max(1, args.batch_size // args.n), seed=args.seed)  # fmt: skip
    keep = KeepRule(min_k=args.min_k, unsolved=not args.drop_unsolved, max_pass_rate=args.max_pass_rate)
    model, processor = load_policy(model_cfg)
    engine = make_engine(RolloutConfig(batch_size=args.batch_size), model, processor, seed=args.seed)
    instruction = "" if args.method == "passrate" or args.no_step_instruction else STEP_INSTRUCTION
    codec = ProcessorCodec(processor, model_cfg, max_prompt_tokens=args.max_prompt_tokens, instruction=instruction)
    verifier: TaskVerifier | CriticVerifier = TaskVerifier(thresholds)
    if args.judge == "critic":
        critic_cfg = ModelConfig(path=args.critic_model, allow_download=args.allow_download)
        critic, critic_processor = (model, processor) if args.critic_model == args.model else load_policy(critic_cfg)
        encode_critic = partial(encode_prompt, critic_processor, model_cfg=critic_cfg,
                                max_prompt_tokens=args.max_prompt_tokens, keep_media=False)  # fmt: skip
        critic_engine = make_engine(RolloutConfig(batch_size=args.batch_size), critic, critic_processor, seed=args.seed)
        verifier = CriticVerifier(critic_engine, encode_critic, max_new_tokens=args.critic_max_new_tokens)
    judge = "task" if args.judge == "task" else f"critic:{args.critic_model}"
    report = select_pool(samples, args.out, engine, codec, verifier, method=args.method, mcts=mcts,
                         passrate=passrate, keep=keep, progress=not args.quiet, judge=judge)  # fmt: skip
    print(f"selected in {args.out}: {report.summary()}")
    print((args.out / "sweep.md").read_text(), end="")


def add_import_vqa_parser(verbs: argparse._SubParsersAction) -> None:
    """`mmrl import-vqa`: (image, question, answer) JSON records -> a native dataset of the `vqa` task."""
    p = verbs.add_parser(
        "import-vqa",
        help="import a VQA JSON file (image, question, answer records) as a dataset, e.g. a pool for mmrl select",
        description="Read a JSON list (or JSON Lines) of records with `image` (path relative to the file), `question`, "
        "`answer` and optional `choices` and `id`, and write them as a dataset of the `vqa` task (samples.jsonl + "
        "media/, images copied in). Multiple-choice records become open-ended questions (options dropped, answer = "
        "the option's text) unless --keep-choices. Unusable records are skipped and counted by reason."
        "\n\nexample:\n  mmrl import-vqa --in ~/data/geoqa/vqa.json --out data/geoqa && "
        "mmrl select --data data/geoqa --model M --out runs/geoqa_select",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--in", dest="in_path", required=True, type=Path, help="the JSON / JSONL file (or its folder)")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write (its samples.jsonl is replaced)")
    p.add_argument("--keep-choices", action="store_true", help="keep multiple choice (answer = the option letter)")
    p.add_argument("--answer-mode", default="boxed", choices=["boxed", "answer_tag", "raw"], help="reply format")
    p.set_defaults(func=cmd_import_vqa)


def cmd_import_vqa(args: argparse.Namespace) -> None:
    _check_out(args.out, "--out")
    start = time.perf_counter()
    # the importer belongs to the task plugin; the CLI reaches it by the task's name
    report = registry.task_class("vqa").import_dataset(
        args.in_path, args.out, open_ended=not args.keep_choices, answer_mode=args.answer_mode
    )
    print(f"imported in {time.perf_counter() - start:.1f}s into {args.out}: {report.summary()}")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # lists the installed plugins: two packages claiming one name stop here
    except MMRLError as e:
        print(f"mmrl: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
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
