"""One GRPO step of a Qwen2.5-VL-3B-sized random-init model with the `hf` engine: speed and memory.

    python benchmarks/gpu_grpo_step.py            # 3B architecture, bf16, CUDA (needs a GPU)
    python benchmarks/gpu_grpo_step.py --tiny     # tiny model on CPU: debugs the script itself

No download: the tokenizer and processor come from a locally built tiny checkpoint
(`mmrl.tiny.build_tiny`); the policy is random-init from a config with the 3B architecture whose
special-token ids match that tokenizer (vocab 151936 is larger than the tokenizer; the extra rows
exist but decode to nothing). Instead of writing ~7.5 GB of random weights to disk and reading them
back, `setup_policy`'s `load_policy` is swapped for a builder that returns (model, processor) the
way `load_policy` does (eval mode, on the accelerator's device, the configured dtype). The loop
pieces are the real ones: `TaskProducer.produce` on `dominant_color` prompts with `make_engine`
(hf), then `update_policy`. A random model samples random tokens, so rewards are ~0: this measures
speed, not learning.

Prints one JSON line and writes it to $OUT/result.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# mmrl.producers imports mmrl.corpus -> mmrl.scenes (open3d) at draw time even for the corpus-free
# `dominant_color` task; a GPU image without these packages gets empty stand-ins (never called here).
for _name in ("open3d", "decord", "av"):
    try:
        __import__(_name)
    except ImportError:
        import types

        sys.modules[_name] = types.ModuleType(_name)

import mmrl.grpo.trainer as trainer  # noqa: E402
from mmrl.config import RunConfig  # noqa: E402
from mmrl.models import _dtype, load_processor  # noqa: E402
from mmrl.producers import TaskProducer  # noqa: E402
from mmrl.rollout import make_engine  # noqa: E402
from mmrl.tiny import SPECIAL_TOKENS, TinySpec, _model_config, build_tiny  # noqa: E402

SPEC_3B = TinySpec(  # Qwen2.5-VL-3B-Instruct's sizes
    hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
    vision_hidden_size=1280, vision_intermediate_size=3420, vision_depth=32, vision_heads=16,
)  # fmt: skip


def big_config(processor, spec: TinySpec, vocab_size: int | None, full_3b: bool):
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _model_config("qwen2.5-vl", spec, vocab_size or len(tok), ids)
    if full_3b:
        config.vision_config.fullatt_block_indexes = [7, 15, 23, 31]
        config.vision_config.tokens_per_second = 2
        config.text_config.rms_norm_eps = 1e-6
        config.tie_word_embeddings = True
        assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24], config.text_config.rope_parameters
    return config, ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU debugging of this script)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=64, help="rollout.batch_size (sequences per generate call)")
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-train-mode", action="store_true",
                    help="leave the model in eval mode after setup_policy, as mmrl does today "
                         "(HF gradient checkpointing is then inactive)")  # fmt: skip
    ap.add_argument(
        "--eval-mode-step",
        action="store_true",
        help="after the measured steps, one more step in eval mode (as mmrl does today)",
    )
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    args = ap.parse_args()

    t_setup = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu_grpo_step."))
    tiny_dir = build_tiny("qwen2.5-vl", work / "tiny")  # tokenizer + processor (+ a tiny model we ignore)

    cfg = RunConfig()
    cfg.model.path = str(tiny_dir)
    cfg.model.dtype = "auto"  # bf16 on CUDA, fp32 on CPU
    cfg.rollout.engine = "hf"
    cfg.rollout.n = args.n
    cfg.rollout.max_new_tokens = args.max_new_tokens
    cfg.rollout.batch_size = args.gen_batch
    cfg.rollout.temperature = 1.0
    cfg.data.prompts_per_step = args.prompts
    cfg.train.micro_batch_size = args.micro_batch
    cfg.train.gradient_checkpointing = True
    cfg.train.lr = 1e-6
    cfg.train.out_dir = str(work / "run")
    spec = TinySpec() if args.tiny else SPEC_3B
    vocab = None if args.tiny else 151936

    built = {}

    def build_policy(model_cfg, device=None):
        """Stands in for `load_policy`: same contract (eval mode, dtype from cfg, on `device`)."""
        from transformers import AutoModelForImageTextToText, GenerationConfig

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        processor = load_processor(model_cfg)
        config, ids = big_config(processor, spec, vocab, full_3b=not args.tiny)
        t0 = time.perf_counter()
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(
                config, dtype=_dtype(model_cfg.dtype, device), attn_implementation=model_cfg.attn_implementation
            )
        model.generation_config = GenerationConfig(
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
            pad_token_id=ids["<|endoftext|>"],
        )
        built["init_s"] = time.perf_counter() - t0
        built["params"] = sum(p.numel() for p in model.parameters())
        return model.eval().to(device), processor

    trainer.load_policy = build_policy  # setup_policy looks the name up in its module at call time
    total = args.warmup + args.steps + (1 if args.eval_mode_step else 0)
    policy = trainer.setup_policy(cfg, total)
    if not args.no_train_mode:
        policy.model.train()  # see report: setup_policy leaves the model in eval mode
    engine = make_engine(cfg.rollout, policy.unwrapped, policy.processor, seed=cfg.train.seed)
    producer = TaskProducer(cfg, policy.processor)
    cuda = torch.cuda.is_available()
    dev = policy.accelerator.device
    setup_s = time.perf_counter() - t_setup

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def one_step(step: int) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        rollouts, m = producer.produce(engine, step)
        sync()
        t1 = time.perf_counter()
        m |= trainer.update_policy(policy, rollouts, cfg, step)
        engine.sync_weights(policy.unwrapped)
        sync()
        t2 = time.perf_counter()
        lengths = [len(r.completion.token_ids) for r in rollouts]
        return {
            "step": step,
            "training_mode": bool(policy.unwrapped.training),
            "generate_s": m["time/generate"],
            "score_s": m["time/score"],
            "produce_s": t1 - t0,
            "update_s": t2 - t1,
            "step_s": t2 - t0,
            "tokens_generated": int(m["tokens_generated"]),
            "gen_tokens_per_s": m["tokens_generated"] / max(m["time/generate"], 1e-9),
            "completion_len_mean": float(sum(lengths) / len(lengths)),
            "completion_len_min": min(lengths),
            "truncated_frac": m["truncated_frac"],
            "prompt_len_mean": float(sum(len(r.prompt) for r in rollouts) / len(rollouts)),
            "reward_mean": m["reward/mean"],
            "grad_norm": m.get("grad_norm"),
            "logprob_diff": m.get("logprob_diff"),
            "peak_gpu_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
            "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved(dev) / 2**30 if cuda else None,
        }

    steps = []
    for s in range(args.warmup + args.steps):
        r = one_step(s)
        r["warmup"] = s < args.warmup
        steps.append(r)
        print(json.dumps(r), flush=True)
    eval_step = None
    if args.eval_mode_step:
        policy.model.eval()  # as mmrl's setup_policy leaves it: HF checkpointing off in the decoder
        eval_step = one_step(args.warmup + args.steps)
        print(json.dumps({"eval_mode_step": eval_step}), flush=True)
    measured = [r for r in steps if not r["warmup"]]
    mean = lambda k: sum(r[k] for r in measured) / len(measured)  # noqa: E731
    result = {
        "model": "tiny qwen2.5-vl" if args.tiny else "qwen2.5-vl-3B architecture, random init",
        "params": built.get("params"),
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": str(next(policy.unwrapped.parameters()).dtype),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "gen_batch": args.gen_batch,
        "micro_batch": args.micro_batch,
        "gradient_checkpointing_effective": not args.no_train_mode,
        "setup_s": setup_s,
        "model_init_s": built.get("init_s"),
        "measured_steps": len(measured),
        "generate_s": mean("generate_s"),
        "gen_tokens_per_s": mean("gen_tokens_per_s"),
        "tokens_generated_per_step": mean("tokens_generated"),
        "completion_len_mean": mean("completion_len_mean"),
        "update_s": mean("update_s"),
        "step_s": mean("step_s"),
        "peak_gpu_gib": max(r["peak_gpu_gib"] for r in steps) if cuda else None,
        "peak_gpu_reserved_gib": max(r["peak_gpu_reserved_gib"] for r in steps) if cuda else None,
        "host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
        "steps": steps,
        "eval_mode_step": eval_step,
    }
    line = json.dumps(result)
    print("RESULT " + line, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
