"""Two benchmarks of the `hf` engine on random-init Qwen2.5-VL-3B/7B-sized models, in one script:

- **GRPO step** (default): one GRPO step (`TaskProducer.produce` + `update_policy`) of a 3B-sized model: speed
  and memory.
- **Decode speed** (`--decode-bench`): the HF engine's two decode loops, transformers' `generate` against the
  static-cache compiled loop (`decode="static"`), on 3B- and 7B-sized models.

    python benchmarks/gpu_grpo_step.py            # 3B architecture, bf16, CUDA (needs a GPU)
    python benchmarks/gpu_grpo_step.py --tiny     # tiny model on CPU: debugs the script itself
    python benchmarks/gpu_grpo_step.py --decode-bench          # HF engine decode speed, 3B + 7B (GPU)
    python benchmarks/gpu_grpo_step.py --decode-bench --tiny   # the same on tiny models, CPU

Both modes: no download. The tokenizer and processor come from a locally built tiny checkpoint
(`mmrl.tiny.build_tiny`); the models are random-init from a config with the 3B (or 7B) architecture whose
special-token ids match that tokenizer (vocab 151936 is larger than the tokenizer; the extra rows exist but
decode to nothing). Each mode prints JSON lines and writes its result to $OUT/result.json (or --out).

GRPO step: instead of writing ~7.5 GB of random weights to disk and reading them back, `setup_policy`'s
`load_policy` is swapped for a builder that returns (model, processor) the way `load_policy` does (eval mode,
on the accelerator's device, the configured dtype). The loop pieces are the real ones: `TaskProducer.produce`
on `dominant_color` prompts with `make_engine` (hf), then `update_policy`. A random model samples random
tokens, so rewards are ~0: this measures speed, not learning. The last line is `RESULT {json}`.

Decode speed (`decode_bench`): for random-init Qwen2.5-VL-3B- and 7B-size bf16 models, 8 prompts with one
small image x n=8 = 64 sequences of exactly `--new-tokens` tokens (min_new_tokens = max_new_tokens), once with
transformers' `generate` and once with the static-cache compiled loop (`decode="static"`), each after one
warm-up call (the static warm-up compiles and records the CUDA graph; its time is reported, not counted). Each
path's tokens/s is also given as a fraction of the memory-bandwidth bound: a decode step reads the language
model's weights (decoder layers, final norm, lm_head) and every sequence's KV cache, so at most
batch x bandwidth / (weight bytes + batch x KV bytes at the mean length) tokens/s. The bandwidth is measured in
the same run with a large device-to-device copy ((bytes read + written) / time); the nominal H100 (3.35 TB/s)
and H200 (4.8 TB/s) figures are printed next to it. One JSON line per model.

The GPU machine may run an older stack (torch 2.11, transformers 5.17): use no newer API here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback
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

from transformers import AutoModelForImageTextToText, GenerationConfig  # noqa: E402

import mmrl.grpo.trainer as trainer  # noqa: E402
from mmrl.config import RunConfig  # noqa: E402
from mmrl.models import _dtype, load_processor  # noqa: E402
from mmrl.producers import TaskProducer  # noqa: E402
from mmrl.rollout import make_engine  # noqa: E402
from mmrl.tiny import SPECIAL_TOKENS, TinySpec, _model_config, build_tiny  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Shared by both modes: model sizes, random-init models, device sync, the result file

SPEC_3B = TinySpec(  # Qwen2.5-VL-3B-Instruct's sizes
    hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
    vision_hidden_size=1280, vision_intermediate_size=3420, vision_depth=32, vision_heads=16,
)  # fmt: skip
SPEC_7B = TinySpec(  # Qwen2.5-VL-7B-Instruct's sizes (same vision tower as 3B)
    hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
    vision_hidden_size=1280, vision_intermediate_size=3420, vision_depth=32, vision_heads=16,
)  # fmt: skip


def big_config(processor, spec: TinySpec, vocab_size: int | None, full_3b: bool):
    """The model config of `spec` with the tokenizer's special-token ids, and those ids (token -> id)."""
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


def random_model(config, ids: dict[str, int], device: torch.device, dtype: torch.dtype, attn_implementation: str):
    """A random-init model of `config`, built on `device`, in eval mode, with the generation config (bos, eos,
    pad) of the tokenizer's special-token `ids`: what `load_policy` returns, without weights on disk."""
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    return model.eval().to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (so that wall-clock times cover it); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_result(out: str, line: str) -> None:
    """`line` (one JSON document) to `out`/result.json, when `out` is set."""
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "result.json").write_text(line + "\n")


# --------------------------------------------------------------------------------------------------
# GRPO step (the default mode)


def grpo_step_bench(args: argparse.Namespace) -> None:
    """Setup, then `--warmup` + `--steps` GRPO steps of the 3B-sized model (see the module docstring)."""
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
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        processor = load_processor(model_cfg)
        config, ids = big_config(processor, spec, vocab, full_3b=not args.tiny)
        t0 = time.perf_counter()
        model = random_model(config, ids, device, _dtype(model_cfg.dtype, device), model_cfg.attn_implementation)
        built["init_s"] = time.perf_counter() - t0
        built["params"] = sum(p.numel() for p in model.parameters())
        return model, processor

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

    def one_step(step: int) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        synchronize(dev)
        t0 = time.perf_counter()
        rollouts, m = producer.produce(engine, step)
        synchronize(dev)
        t1 = time.perf_counter()
        m |= trainer.update_policy(policy, rollouts, cfg, step)
        engine.sync_weights(policy.unwrapped)
        synchronize(dev)
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

    def mean(key: str) -> float:
        return sum(r[key] for r in measured) / len(measured)

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
    write_result(args.out, line)


# --------------------------------------------------------------------------------------------------
# Decode speed (--decode-bench)

NOMINAL_TB_S = {"H100": 3.35, "H200": 4.8}
"""Datasheet HBM bandwidth (TB/s) of the GPUs this benchmark is run on, matched in the device name."""


def copy_bandwidth(device: torch.device, gib: float = 2.0, repeats: int = 10) -> float:
    """Device memory bandwidth in bytes/s: a `gib` GiB device-to-device copy, (read + written) / median time."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1e3)
    times = sorted(times[2:])
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 4 / times[len(times) // 2]


def decode_bench(args) -> None:
    """Tokens/s of the HF engine's two decode loops on 3B- and 7B-size models (see the module docstring)."""
    import numpy as np
    from PIL import Image
    from torch._dynamo.utils import counters

    from mmrl.config import ModelConfig
    from mmrl.contracts import SamplingParams
    from mmrl.rollout import HFEngine, collate, completion_logprobs, encode_prompt, logprob_agreement
    from mmrl.rollout.decode import cache_length, kv_bytes_per_sequence

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:  # say why a CUDA graph was skipped and why a step recompiled, if either happens
        torch._logging.set_logs(perf_hints=True, recompiles=True)
    work = Path(tempfile.mkdtemp(prefix="decode_bench."))
    tiny_dir = build_tiny("qwen2.5-vl", work / "tiny")  # tokenizer + processor
    model_cfg = ModelConfig(path=str(tiny_dir))
    processor = load_processor(model_cfg)
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(args.prompts):
        pixels = rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
        messages = [{"role": "user", "content": [
            {"type": "image", "image": Image.fromarray(pixels)},
            {"type": "text", "text": f"Picture {i}: describe what you see, then name its main colour."},
        ]}]  # fmt: skip
        prompts.append(encode_prompt(processor, messages, model_cfg, max_prompt_tokens=4096))
    batch = args.prompts * args.n
    new = args.new_tokens
    sampling = SamplingParams(max_new_tokens=new, min_new_tokens=new, temperature=1.0, seed=0)
    warm_sampling = SamplingParams(max_new_tokens=8, min_new_tokens=8, temperature=1.0, seed=1)
    bandwidth = copy_bandwidth(device) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    nominal = next((tb for key, tb in NOMINAL_TB_S.items() if key in name), None)
    models = [("tiny-a", TinySpec(), None, False), ("tiny-b", TinySpec(num_layers=4), None, False)]
    if not args.tiny:
        sizes = {
            "3b": ("qwen2.5-vl-3b-size", SPEC_3B, 151936, True),
            "7b": ("qwen2.5-vl-7b-size", SPEC_7B, 152064, False),
        }
        models = [sizes[s.strip()] for s in args.sizes.split(",")]
    results = []

    def timed(engine, params):
        synchronize(device)
        t0 = time.perf_counter()
        out = engine.generate(prompts, args.n, params)
        synchronize(device)
        return time.perf_counter() - t0, out

    for label, spec, vocab, tied in models:
        config, ids = big_config(processor, spec, vocab, full_3b=not args.tiny)
        config.tie_word_embeddings = tied
        config.text_config.tie_word_embeddings = tied
        t0 = time.perf_counter()
        model = random_model(config, ids, device, torch.bfloat16 if cuda else torch.float32, "sdpa")
        init_s = time.perf_counter() - t0
        lm = model.model.language_model
        weight_bytes = sum(p.numel() * p.element_size() for n_, p in lm.named_parameters() if "embed_tokens" not in n_)
        weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
        dtype = next(model.parameters()).dtype
        prompt_len = max(len(p) for p in prompts)
        kv_mean = kv_bytes_per_sequence(model.config, prompt_len + new // 2, dtype)
        step_bytes = weight_bytes + batch * kv_mean
        row = {
            "model": label, "params": sum(p.numel() for p in model.parameters()), "dtype": str(dtype),
            "device": name, "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "sequences": batch, "prompts": args.prompts, "n": args.n, "prompt_tokens": prompt_len,
            "new_tokens": new, "model_init_s": round(init_s, 2),
            "lm_weight_gb": weight_bytes / 1e9, "kv_gb_per_step_at_mean_len": batch * kv_mean / 1e9,
            "bytes_per_decode_step_gb": step_bytes / 1e9,
        }  # fmt: skip
        if cuda:
            row["bandwidth_measured_tb_s"] = bandwidth / 1e12
            row["bandwidth_nominal_tb_s"] = nominal
            row["bound_tokens_per_s"] = batch * bandwidth / step_bytes
            if nominal:
                row["bound_tokens_per_s_nominal"] = batch * nominal * 1e12 / step_bytes
        outputs = {}
        counters.clear()
        for path in ("generate", "static"):
            try:  # a failing path (e.g. compilation on an unexpected stack) is reported, the other still runs
                engine = HFEngine(model, processor, batch_size=batch, decode=path)
                engine_pad = engine.pad_id
                warm = sampling if path == "static" else warm_sampling  # static: same cache shape = same graph
                warm_s, _ = timed(engine, warm)
                print(f"[decode-bench] {label} {path}: warm-up {warm_s:.1f} s", file=sys.stderr, flush=True)
                run_s, out = timed(engine, sampling)
            except Exception as exc:  # noqa: BLE001 - recorded in the result, the run goes on
                row[f"{path}_error"] = "".join(traceback.format_exception(exc)[-6:])
                print(f"[decode-bench] {label} {path} FAILED:\n{row[f'{path}_error']}", file=sys.stderr, flush=True)
                engine = None
                continue
            tokens = sum(len(c.token_ids) for group in out for c in group)
            outputs[path] = [c for group in out for c in group]
            tps = tokens / run_s
            row[f"{path}_warmup_s"] = round(warm_s, 2)
            row[f"{path}_s"] = round(run_s, 3)
            row[f"{path}_tokens"] = tokens
            row[f"{path}_tokens_per_s"] = round(tps, 1)
            row[f"{path}_batch_sizes"] = engine.last_batch_sizes
            if cuda:
                row[f"{path}_bound_fraction"] = round(tps / row["bound_tokens_per_s"], 4)
                row[f"{path}_peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if path == "static":
                row["static_cache_len"] = cache_length(prompt_len, new, engine._decoder.length_bucket)
                row["static_compiled"] = engine._decoder.compile_step
                row["static_dynamo_graphs"] = counters["stats"]["unique_graphs"]
                row["static_cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
            del engine
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        if len(outputs) == 2:
            row["static_over_generate"] = round(row["static_tokens_per_s"] / row["generate_tokens_per_s"], 3)
        # Sanity of the static loop on this device: its log-probs against the trainer's forward (R6) for
        # the first 8 sequences (with min_new_tokens the engine masks stop tokens, so ~1e-3 even in fp32),
        # and how long both loops agree token for token (same keys, same noise: they part only where the
        # two loops' logits differ enough to flip a draw).
        if "static" in outputs:
            check = outputs["static"][:8]
            with torch.no_grad():
                seqs = [p for p in prompts for _ in range(args.n)][:8]
                scored = collate(seqs, [c.token_ids for c in check], engine_pad)
                scored = {k: v.to(device) for k, v in scored.items()}
                trainer_lp, _, mask = completion_logprobs(model, scored)
            agreement = logprob_agreement([c.logprobs for c in check], trainer_lp, mask)
            row["static_logprob_vs_trainer"] = round(agreement, 5)
        if len(outputs) == 2:
            prefixes = []
            for a, b in zip(outputs["generate"], outputs["static"]):
                k = 0
                while k < min(len(a.token_ids), len(b.token_ids)) and a.token_ids[k] == b.token_ids[k]:
                    k += 1
                prefixes.append(k)
            row["loops_common_prefix_mean"] = sum(prefixes) / len(prefixes)
            row["loops_first_token_agree"] = sum(k > 0 for k in prefixes) / len(prefixes)
        print(json.dumps(row), flush=True)
        results.append(row)
        del model, lm
        if cuda:
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    write_result(args.out, json.dumps({"decode_bench": results}))


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU debugging of this script)")
    ap.add_argument(
        "--decode-bench",
        action="store_true",
        help="HF engine decode tokens/s, generate vs static, 3B + 7B sizes (see the module docstring)",
    )
    ap.add_argument("--new-tokens", type=int, default=256, help="--decode-bench: tokens generated per sequence")
    ap.add_argument("--image-size", type=int, default=112, help="--decode-bench: side of each prompt's image (px)")
    ap.add_argument("--sizes", default="3b,7b", help="--decode-bench: model sizes to run, of 3b,7b")
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
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.decode_bench:
        decode_bench(args)
    else:
        grpo_step_bench(args)


if __name__ == "__main__":
    main()
