"""Producers turn Samples into scored, grouped Rollouts; the trainer knows nothing about tasks.

`TaskProducer` serves single-turn tasks from a weighted mixture of Sample sources (datasets on
disk and live generators). One step:

    draw prompts  ->  encode (media once per prompt)  ->  engine.generate(n per prompt)
        ->  task.reward per completion  ->  group advantages  ->  [dynamic sampling] -> [replay]

Determinism: every random choice is a pure function of (seed, step, round, slot) or of a
source's own counter, so a resumed run draws exactly the Samples an uninterrupted run would. A source's
draws are keyed by (seed, source index, kind, task key, counter or epoch), the task key being
`mmrl.task.task_key(name)`: two tasks with the same seed draw different items and shuffles.
The producer's state (source counters, dataset epoch orders) goes into checkpoints.

Prefetching (`data.prefetch > 0`): draw number k of source i is a pure function of (seed, i, task, k), so
worker processes (`mmrl.prefetch.KeyedPrefetcher`, each with its own copy of the sources and the processor)
compute draws `(i, k)` (the Sample, its encoded prompt, or why it was skipped) for the round-0 plans of the
next `data.prefetch` steps while the current step trains. The trainer's process still runs the draw loop
itself (`prepare`): it picks the source with the same (step, round, slot) rng, takes draw `(i, counter_i)`
from the prefetcher instead of computing it, counts skips and advances the counter exactly as without
prefetching. So samples, order and seeds are the same by construction, dynamic-sampling rounds (round >= 1,
unknown in advance) take their draws on demand (computed by a worker then, or found ready when the plan had
already asked for them), and checkpoints hold the counters of the draws used, never of those prefetched.

`make_producer` is what the trainer calls: `TaskProducer`, or the producer of the self-play game
`game.name` names, found through the registry.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mmrl import registry
from mmrl.baselines import TaskCache, constant_completions, random_baseline, score
from mmrl.config import CorpusConfig, DataSource, RunConfig
from mmrl.contracts import Completion, EncodedPrompt, Engine, Producer, Reward, Rollout, SamplingParams
from mmrl.corpus import LazyCorpus
from mmrl.errors import MediaError, MMRLError, SkipItem
from mmrl.grpo.advantages import group_advantages, zero_variance_groups
from mmrl.grpo.replay import select_replay
from mmrl.prefetch import KeyedPrefetcher
from mmrl.rollout import sampling_params
from mmrl.rollout.encode import encode_prompt
from mmrl.sample import Sample, read_dataset
from mmrl.task import Task, answer_key, answer_spread, score_group, task_key
from rewards.boxes import PIXEL_FAMILIES

log = logging.getLogger(__name__)

MAX_BAD_DRAWS = 32  # consecutive unusable Samples from one source before we give up on it
HELDOUT_STEP = 2**40  # the held-out stream draws as if at a step no run reaches


@dataclass
class SampleSource:
    """One entry of the mixture: a dataset on disk (shuffled per epoch) or a live task generator."""

    spec: DataSource
    index: int
    seed: int
    corpus_cfg: CorpusConfig
    counter: int = 0
    """Samples drawn so far; with the seed it fixes the next draw."""
    _task: Any = None
    _items: Any = None
    _dataset: list[Sample] | None = None

    @property
    def task(self) -> Task:
        if self._task is None:
            self._task = registry.get_task(self.spec.task, **self.spec.params)
        return self._task

    def draw(self) -> Sample:
        """The next Sample of this source, deterministic in (seed, index, task name, counter): a dataset is read
        in the order `default_rng([seed, index, 1, key, epoch]).permutation(n)`, a live task draws sample k with
        `default_rng([seed, index, 2, key, k])`, key = `task_key(spec.task)`."""
        k = self.counter
        self.counter += 1
        key = task_key(self.spec.task)
        if self.spec.path:
            dataset = self._load_dataset()
            epoch, pos = divmod(k, len(dataset))
            order = np.random.default_rng([self.seed, self.index, 1, key, epoch]).permutation(len(dataset))
            return dataset[int(order[pos])]
        items = self._source_items()
        rng = np.random.default_rng([self.seed, self.index, 2, key, k])
        item = items[int(rng.integers(len(items)))]
        sample = self.task.make(item, rng)
        sample.id = f"{self.spec.task}-{self.index}-{k}"
        return sample

    def reward_for(self, sample: Sample) -> Task:
        """The task object whose reward scores `sample` (a dataset may mix tasks)."""
        if sample.task == self.spec.task:
            return self.task
        return registry.get_task(sample.task)

    def _load_dataset(self) -> list[Sample]:
        if self._dataset is None:
            self._dataset = read_dataset(self.spec.path)
            if not self._dataset:
                raise MMRLError(f"dataset {self.spec.path} has no samples")
        return self._dataset

    def _source_items(self):
        if self._items is None:
            source: Any = self.spec.source
            if source == "default":
                source = LazyCorpus(self.corpus_cfg)
            else:
                source = Path(source)
            self._items = self.task.sources(source)
            if not len(self._items):
                raise MMRLError(f"task '{self.spec.task}' found no source items in {self.spec.source}")
        return self._items


@dataclass
class Attempt:
    """What draw number k of one source gave: a usable Sample and its prompt, or the reason it is skipped."""

    sample: Sample | None
    prompt: EncodedPrompt | None
    skip: str = ""
    """Empty for a usable draw, else the `stats` key it counts under: `skipped/<reason>` (the source item is
    unusable) or `skipped_samples` (the Sample does not encode)."""
    why: str = ""
    """The error message of a skip, for the log."""


def attempt_draw(source: SampleSource, counter: int, processor: Any, cfg: RunConfig) -> Attempt:
    """Draw number `counter` of `source`, encoded: a pure function of (source seed, index, task, counter). It
    leaves `source.counter` at `counter + 1`. The trainer's process and prefetch workers both call it."""
    source.counter = counter
    try:
        sample = source.draw()
    except (SkipItem, MediaError) as e:  # an unusable source item
        return Attempt(None, None, f"skipped/{getattr(e, 'reason', 'unreadable_media')}", str(e))
    try:
        prompt = encode_prompt(processor, sample.messages, cfg.model, max_prompt_tokens=cfg.rollout.max_prompt_tokens)
    except MMRLError as e:
        return Attempt(sample, None, "skipped_samples", str(e))
    check_box_frame(sample, prompt, processor, cfg.model)  # outside the try: a config error, not a skip
    return Attempt(sample, prompt)


def make_sources(cfg: RunConfig, rank: int) -> list[SampleSource]:
    """The mixture's sources of data-parallel rank `rank`, each at counter 0."""
    seed = cfg.data.seed * 1000 + rank
    return [SampleSource(s, i, seed, cfg.corpus) for i, s in enumerate(cfg.data.sources)]


@dataclass
class SourceDraws:
    """The job of a prefetch worker: `(source index, draw number) -> Attempt`, on the worker's own copies of the
    mixture's sources (made on first use there). `task_classes` are pickled by reference so that a worker
    imports the modules that register the tasks, plugins registered in-process (`registry.register`) included."""

    cfg: RunConfig
    processor: Any
    rank: int
    task_classes: list[type]
    _sources: list[SampleSource] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sources": None}  # each worker builds (and caches) its own

    def __call__(self, key: tuple[int, int]) -> Attempt:
        index, counter = key
        if self._sources is None:
            self._sources = make_sources(self.cfg, self.rank)
        source = self._sources[index]
        try:
            return attempt_draw(source, counter, self.processor, self.cfg)
        except Exception as e:  # name the source and the draw: the trainer sees this message, not our frames
            raise MMRLError(f"{describe_draw(source.spec, index, counter)}: {type(e).__name__}: {e}") from e


def describe_draw(spec: DataSource, index: int, counter: int) -> str:
    """Words for draw `counter` of source `index` in error messages (a live Sample's id is `<task>-<index>-<k>`)."""
    where = f"dataset {spec.path}" if spec.path else f"sample id {spec.task}-{index}-{counter}"
    return f"source {index} (task {spec.task}), draw {counter} ({where})"


def describe_key(specs: list[DataSource], key: tuple[int, int]) -> str:
    """`describe_draw` of a prefetch key (source index, draw number)."""
    return describe_draw(specs[key[0]], key[0], key[1])


@dataclass
class Prepared:
    """A drawn Sample, encoded, with the task that scores it."""

    sample: Sample
    prompt: EncodedPrompt
    task: Task


@dataclass
class TaskProducer:
    """Single-turn tasks from a weighted mixture of sources; GRPO-family group advantages."""

    cfg: RunConfig
    processor: Any
    rank: int = 0
    """Data-parallel rank: ranks draw disjoint sample streams."""
    sources: list[SampleSource] = field(init=False)
    stats: Counter = field(default_factory=Counter)
    _heldout: list[Prepared] | None = field(default=None, init=False)
    _baselines: dict[str, float] | None = field(default=None, init=False)
    _prefetcher: KeyedPrefetcher | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        specs = self.cfg.data.sources
        if not specs:
            raise MMRLError("data.sources is empty: name at least one task or dataset")
        self.sources = make_sources(self.cfg, self.rank)
        weights = np.array([s.weight for s in specs], dtype=float)
        if (weights < 0).any() or weights.sum() <= 0:
            raise MMRLError(f"data.sources weights must be >= 0 and not all 0, got {weights.tolist()}")
        self.weights = weights / weights.sum()

    # -- experience -------------------------------------------------------------------------------

    def produce(self, engine: Engine, step: int) -> tuple[list[Rollout], dict[str, float]]:
        """Rollouts for one optimiser step plus the metrics of making them."""
        cfg = self.cfg
        n, want = cfg.rollout.n, cfg.data.prompts_per_step
        metrics: dict[str, float] = {"time/wait_prompts": 0.0, "time/generate": 0.0, "time/score": 0.0}
        kept: list[list[Rollout]] = []
        all_groups: list[list[Rollout]] = []
        rounds = 1 + (cfg.algorithm.max_resample if cfg.algorithm.dynamic_sampling else 0)
        for round_ in range(rounds):
            missing = want - len(kept)
            if missing <= 0:
                break
            t0 = time.perf_counter()
            prepared = self._prepare_batch(step, round_, missing, cfg.train.steps)
            metrics["time/wait_prompts"] += time.perf_counter() - t0
            seed = int(np.random.default_rng([cfg.train.seed, self.rank, step, round_]).integers(2**31))
            sampling = sampling_params(cfg.rollout, seed=seed)
            t0 = time.perf_counter()
            completions = engine.generate([p.prompt for p in prepared], n, sampling)
            metrics["time/generate"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            groups = [self._score(p, comps, f"{step}.{round_}.{slot}") for slot, (p, comps) in
                      enumerate(zip(prepared, completions))]  # fmt: skip
            metrics["time/score"] += time.perf_counter() - t0
            all_groups += groups
            if not cfg.algorithm.dynamic_sampling:
                kept = groups
                break
            rewards = np.array([r.reward for g in groups for r in g])
            ids = [r.group_id for g in groups for r in g]
            flat = zero_variance_groups(rewards, ids)
            kept += [g for g in groups if g[0].group_id not in flat][: want - len(kept)]
            metrics["dynamic/rounds"] = round_ + 1
        if not kept:  # dynamic sampling found no informative group: train on what we have (zero advantage)
            kept = all_groups[:want]
        rollouts = [r for g in kept for r in g]
        self._assign_advantages(rollouts)
        metrics |= self._metrics([r for g in all_groups for r in g], rollouts)
        if cfg.algorithm.replay:
            rollouts = self._replay(rollouts, step, metrics)
        return rollouts, metrics

    def prepare(self, step: int, round_: int, slot: int) -> Prepared:
        """Draw one usable Sample from the mixture; unusable ones are skipped and counted.

        The source is `rng([data.seed, rank, step, round, slot]).choice(sources, p=weights)`; its draws
        `counter, counter + 1, ...` are taken until one is usable (at most MAX_BAD_DRAWS), from the prefetcher
        when one runs, else computed here (`attempt_draw`)."""
        index = self._source_at(step, round_, slot)
        source = self.sources[index]
        for _ in range(MAX_BAD_DRAWS):
            counter = source.counter
            if self._prefetcher is not None:
                attempt = self._prefetcher.take((index, counter))
            else:
                attempt = attempt_draw(source, counter, self.processor, self.cfg)
            source.counter = counter + 1
            if attempt.skip:
                self._count_skip(source, attempt)
                continue
            assert attempt.sample is not None and attempt.prompt is not None
            self.stats["prompts_fitted"] += bool(attempt.prompt.fitted)  # videos shrunk to fit (model.video_fit_budget)
            return Prepared(attempt.sample, attempt.prompt, source.reward_for(attempt.sample))
        raise MMRLError(f"{MAX_BAD_DRAWS} unusable samples in a row from source {source.spec}; see the log")

    def _source_at(self, step: int, round_: int, slot: int) -> int:
        """Index of the source that slot `slot` of round `round_` of step `step` draws from."""
        rng = np.random.default_rng([self.cfg.data.seed, self.rank, step, round_, slot])
        return int(rng.choice(len(self.sources), p=self._weights_at(step)))

    def _count_skip(self, source: SampleSource, attempt: Attempt) -> None:
        self.stats[attempt.skip] += 1
        if attempt.skip == "skipped_samples":
            log.warning("skipping sample %s: %s", attempt.sample.id if attempt.sample else "?", attempt.why)
            return
        # The first skip of each reason is shown; later ones only count (metrics `skipped/<reason>`).
        level = logging.WARNING if self.stats[attempt.skip] == 1 else logging.DEBUG
        log.log(level, "skipping a source item of %s: %s (further skips for this reason are only counted)",
                source.spec.task, attempt.why)  # fmt: skip

    def _prepare_batch(self, step: int, round_: int, count: int, steps: int) -> list[Prepared]:
        """Slots 0..count-1 of (step, round); a round-0 batch first asks the prefetcher (with `data.prefetch`)
        for the draws of this step and the next `data.prefetch` ones (of `steps`)."""
        if round_ == 0:
            self._prefetch_ahead(step, count, steps)
        return [self.prepare(step, round_, slot) for slot in range(count)]

    def start_prefetch(self, step: int) -> None:
        """Start the prefetch workers (with `data.prefetch > 0`) and ask them for the draws of steps
        `step .. step + data.prefetch` (the trainer calls it after restoring a checkpoint, so that the
        workers start up while it evaluates). A no-op without prefetching."""
        self._prefetch_ahead(step, self.cfg.data.prompts_per_step, self.cfg.train.steps)

    def _prefetch_ahead(self, step: int, count: int, steps: int) -> None:
        """Request the draws the round-0 plans of steps `step .. step + data.prefetch` (below `steps`) will take,
        `count` slots each, assuming no skips: slot by slot, source i's next draw number. Only a forecast:
        what is used is decided by `prepare`, so a wrong forecast (skips, resample rounds) costs a wait, never a
        different sample."""
        depth = self.cfg.data.prefetch
        if depth <= 0:
            return
        if self._prefetcher is None:
            job = SourceDraws(self.cfg, self.processor, self.rank, self._task_classes())
            self._prefetcher = KeyedPrefetcher(
                job,
                workers=self.cfg.data.prefetch_workers,
                name=f"prefetch[rank {self.rank}]",
                describe=partial(describe_key, [s.spec for s in self.sources]),  # not a method: no cycle via self
            )
        next_draw = [s.counter for s in self.sources]
        try:
            for planned in range(step, min(step + depth + 1, steps)):
                for slot in range(count):
                    index = self._source_at(planned, 0, slot)
                    self._prefetcher.request((index, next_draw[index]))
                    next_draw[index] += 1
        except MMRLError:  # a step without an active source: `prepare` reports it when (if) it is reached
            pass

    def _task_classes(self) -> list[type]:
        classes = []
        for source in self.sources:
            try:
                classes.append(registry.task_class(source.spec.task))
            except MMRLError:  # an unknown task: the worker's draw fails and names it when that draw is taken
                pass
        return classes

    def close(self) -> None:
        """Stop the prefetch workers, if any (the trainer calls it when the run ends or fails)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def _weights_at(self, step: int) -> np.ndarray:
        """The mixture weights at optimiser step `step`: sources outside their `steps` window get 0 (the
        held-out stream, at HELDOUT_STEP, draws from every source). Without windows these are `self.weights`,
        so windows change nothing for a config that has none."""
        if step == HELDOUT_STEP or all(s.spec.active(step) for s in self.sources):
            return self.weights
        weights = np.array([w if s.spec.active(step) else 0.0 for s, w in zip(self.sources, self.weights)])
        if weights.sum() <= 0:
            raise MMRLError(f"no data source is active at step {step}: check the `steps` windows of data.sources")
        return weights / weights.sum()

    def sft_examples(self, step: int, count: int) -> list[tuple[EncodedPrompt, str]]:
        """`count` (prompt, reference completion) pairs for supervised step `step`: the Samples `produce` would
        draw at (step, round 0), each with its task's `reference_completion`. With
        `sft.shuffle_answers` the completions are permuted within the batch (rng([data.seed, step, 5])), so the
        model learns the format and the answer vocabulary, not the task (accuracy at chance)."""
        batch = self._prepare_batch(step, 0, count, self.cfg.sft.steps)
        targets = [p.task.reference_completion(p.sample) for p in batch]
        if self.cfg.sft.shuffle_answers:
            order = np.random.default_rng([self.cfg.data.seed, step, 5]).permutation(len(targets))
            targets = [targets[i] for i in order]
        return [(p.prompt, t) for p, t in zip(batch, targets)]

    def _rewards(self, prepared: Prepared, completions: list[str]) -> list[Reward]:
        """The task's rewards of one prompt's completions, scored as a group (`Task.reward_group`); a reward that
        raises scores 0 and is counted (`reward_errors`)."""
        rewards = []
        for reward, error in score_group(prepared.task, completions, prepared.sample):
            if error is not None:
                self.stats["reward_errors"] += 1
                log.warning("reward of task %s raised %s; scored 0", prepared.sample.task, error)
            rewards.append(reward)
        return rewards

    def _score(self, prepared: Prepared, completions: list[Completion], group_id: str) -> list[Rollout]:
        rewards = self._rewards(prepared, [c.text for c in completions])
        return [
            Rollout(
                prompt=prepared.prompt,
                completion=completion,
                reward=float(reward.score),
                advantage=0.0,
                group_id=group_id,
                sample_id=prepared.sample.id,
                task=prepared.sample.task,
                reward_parts=dict(reward.parts),
                meta={"answer": answer_key(prepared.task, completion.text, prepared.sample)},
            )
            for completion, reward in zip(completions, rewards)
        ]

    def _assign_advantages(self, rollouts: list[Rollout]) -> None:
        rewards = np.array([r.reward for r in rollouts])
        advantages = group_advantages(
            rewards, [r.group_id for r in rollouts], self.cfg.algorithm.advantage, self.cfg.algorithm.advantage_eps
        )
        for r, a in zip(rollouts, advantages):
            r.advantage = float(a)

    def _replay(self, rollouts: list[Rollout], step: int, metrics: dict[str, float]) -> list[Rollout]:
        """Selective Sample Replay: train on |A|-weighted draws (VL-Rethinker, Wang et al. 2025)."""
        rng = np.random.default_rng([self.cfg.data.seed, self.rank, step, 99])
        idx = select_replay(
            np.array([r.advantage for r in rollouts]),
            rng,
            alpha=self.cfg.algorithm.replay_alpha,
            refill_factor=self.cfg.algorithm.replay_refill_factor,
        )
        metrics["replay/selected"] = float(len(idx))
        metrics["replay/unique_frac"] = float(len(set(idx.tolist())) / max(len(idx), 1))
        return [rollouts[i] for i in idx]

    def _metrics(self, generated: list[Rollout], trained: list[Rollout]) -> dict[str, float]:
        rewards = np.array([r.reward for r in trained])
        adv = np.array([r.advantage for r in trained])
        lengths = np.array([len(r.completion.token_ids) for r in generated])
        all_rewards = np.array([r.reward for r in generated])
        ids = [r.group_id for r in generated]
        m = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            "adv/mean": float(adv.mean()),
            "adv/std": float(adv.std()),
            "adv/abs_mean": float(np.abs(adv).mean()),
            "completion_len/mean": float(lengths.mean()),
            "completion_len/max": float(lengths.max()),
            "truncated_frac": float(np.mean([r.truncated for r in generated])),
            "frac_zero_std_groups": len(zero_variance_groups(all_rewards, ids)) / max(len(set(ids)), 1),
            "tokens_generated": float(lengths.sum()),
            "skipped_samples": float(self.stats["skipped_samples"]),
            "reward_errors": float(self.stats["reward_errors"]),
            "prompts_fitted": float(self.stats["prompts_fitted"]),
            **{k: float(v) for k, v in self.stats.items() if k.startswith("skipped/")},
        }
        by_task: dict[str, list[Rollout]] = {}
        for r in trained:
            by_task.setdefault(r.task, []).append(r)
        for task, rs in by_task.items():
            m[f"reward/{task}"] = float(np.mean([r.reward for r in rs]))
            for part in sorted({p for r in rs for p in r.reward_parts}):
                m[f"reward/{task}/{part}"] = float(np.mean([r.reward_parts.get(part, 0.0) for r in rs]))
        for task in sorted({r.task for r in generated}):  # collapse onto one reply shows here before in the reward
            spread, top_share = answer_spread([r.meta["answer"] for r in generated if r.task == task])
            m[f"spread/{task}"], m[f"top_share/{task}"] = spread, top_share
        return m

    def heldout(self, count: int) -> list[Prepared]:
        """`count` evaluation Samples from a stream of their own (live generators never repeat a
        training Sample; a dataset source shares its Samples with training). Skips while drawing them
        are not counted in `stats`, which describe the training stream."""
        sources = [dataclasses.replace(s, seed=s.seed + 10**6, counter=0, _dataset=s._dataset) for s in self.sources]
        saved, self.sources = (self.sources, self.stats, self._prefetcher), sources
        self.stats, self._prefetcher = Counter(), None  # the workers prefetch the training stream only
        try:
            return [self.prepare(HELDOUT_STEP, 0, slot) for slot in range(count)]
        finally:
            self.sources, self.stats, self._prefetcher = saved

    def evaluate(self, engine: Engine) -> dict[str, float]:
        """The `data.eval_samples` held-out Samples (drawn once, on first use), answered greedily and, with
        `data.eval_k > 0`, k times sampled at `rollout.temperature`.

        Greedy: `eval/reward`, `eval/accuracy` (the mean `accuracy` part, when every task has one), `eval/spread`
        and `eval/top_share` (`mmrl.task.answer_spread`). Sampled: the same names with `_sampled`, means over
        all k·n completions. Both are needed: greedy decoding answers with the per-position mode, which can sit
        still (e.g. "2, 1, 1, 1", not a permutation, for every jigsaw) while the sampled policy improves.
        """
        if self._heldout is None:
            self._heldout = self.heldout(self.cfg.data.eval_samples)
        if not self._heldout:
            return {}
        rollout = self.cfg.rollout
        prompts = [p.prompt for p in self._heldout]
        runs = {"": (1, SamplingParams(max_new_tokens=rollout.max_new_tokens, temperature=0.0, seed=0))}
        if self.cfg.data.eval_k > 0:
            runs["_sampled"] = (self.cfg.data.eval_k, sampling_params(rollout, seed=1))
        out: dict[str, float] = {}
        for suffix, (k, sampling) in runs.items():
            rewards, answers = [], []
            for p, group in zip(self._heldout, engine.generate(prompts, k, sampling)):
                rewards += self._rewards(p, [completion.text for completion in group])
                answers += [answer_key(p.task, completion.text, p.sample) for completion in group]
            out[f"eval/reward{suffix}"] = float(np.mean([r.score for r in rewards]))
            if all("accuracy" in r.parts for r in rewards):
                out[f"eval/accuracy{suffix}"] = float(np.mean([r.parts["accuracy"] for r in rewards]))
            out[f"eval/spread{suffix}"], out[f"eval/top_share{suffix}"] = answer_spread(answers)
        return out | self._heldout_baselines()

    def _heldout_baselines(self) -> dict[str, float]:
        """What the held-out reward must beat to mean anything, computed once: the random-guess baseline
        (`eval/random_reward`) and the best constant reply per task (`eval/constant_reward`, with its accuracy
        and its spread, 1/n: one answer), as `mmrl eval` reports them (`mmrl.baselines`)."""
        if self._baselines is None:
            samples, tasks = [p.sample for p in self._heldout or []], TaskCache()
            random = random_baseline(samples, draws=8, seed=self.cfg.data.seed, tasks=tasks)
            constant = score(samples, constant_completions(samples, tasks), tasks)
            self._baselines = {
                "eval/random_reward": float(np.mean([r.reward for r in random])),
                "eval/random_accuracy": float(np.mean([r.accuracy for r in random])),
                "eval/constant_reward": float(np.mean([r.reward for r in constant])),
                "eval/constant_accuracy": float(np.mean([r.accuracy for r in constant])),
                "eval/constant_spread": answer_spread([r.answer for r in constant])[0],
            }
        return self._baselines

    # -- checkpoint state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Source counters and skip counts of the draws used so far (draws prefetched and not used yet are not
        in it: a resumed run computes them again)."""
        return {"counters": [s.counter for s in self.sources], "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = state["counters"]
        if len(counters) != len(self.sources):
            raise MMRLError(f"checkpoint has {len(counters)} data sources, the config {len(self.sources)}")
        for s, c in zip(self.sources, counters):
            s.counter = int(c)
        self.stats = Counter(state.get("stats", {}))
        self.close()  # draws prefetched for the old counters would be used by nobody; restarted on next use


def check_box_frame(sample: Sample, prompt: EncodedPrompt, processor: Any, model_cfg: Any) -> None:
    """Refuse a grounding Sample whose boxes are in pixels of a resized image (`meta["coords"]` in
    `rewards.boxes.PIXEL_FAMILIES`) that is not the size the processor actually produced (`image_grid_thw` x
    patch size): the task's pixel budget differs from the model's, and every reward would be computed on
    wrong coordinates. Samples without `meta["model_size"]` are not grounding samples and pass."""
    expected, grid = sample.meta.get("model_size"), prompt.vision.get("image_grid_thw")
    if sample.meta.get("coords") not in PIXEL_FAMILIES or expected is None or grid is None or len(grid) != 1:
        return
    patch = int(processor.image_processor.patch_size)
    actual = [int(grid[0][2]) * patch, int(grid[0][1]) * patch]
    if actual != [int(v) for v in expected]:
        task = sample.meta.get("params") or {}
        raise MMRLError(
            f"sample {sample.id} ({sample.task}) states boxes in pixels of a {expected[0]}x{expected[1]} image "
            f"(task min_pixels={task.get('min_pixels')}, max_pixels={task.get('max_pixels')}, "
            f"coords={sample.meta['coords']}), but the model's processor resized it to {actual[0]}x{actual[1]} "
            f"(model.min_pixels={model_cfg.min_pixels}, model.max_pixels={model_cfg.max_pixels}); give the task the "
            "model's pixel budget (its params min_pixels / max_pixels) or the model the task's, and a coords "
            "family matching the model, then regenerate the data"
        )


def make_producer(cfg: RunConfig, processor: Any, rank: int = 0) -> Producer:
    """The producer the config asks for: the self-play game `game.name` names (its plugin's `producer`), else
    the task mixture of `data.sources`, with synthesized samples mixed in when `dataserver.enabled` (Syn-GRPO),
    or with the policy building a task's training pool (ViPER's closed loop, `mmrl.dataserver.closed_loop`)."""
    if cfg.game.name:
        if cfg.dataserver.enabled:
            raise MMRLError("dataserver.enabled works with the task mixture of data.sources, not with a game")
        return registry.game(cfg.game.name).producer(cfg, processor, rank=rank)
    from mmrl.dataserver.closed_loop import ClosedLoopProducer, uses_task_pools  # builds on TaskProducer, above

    if uses_task_pools(cfg):  # a task whose training pool the policy builds (caption_refine with captioner: policy)
        if cfg.dataserver.enabled:
            raise MMRLError("a closed-loop task (captioner: policy) does not combine with dataserver.enabled yet")
        return ClosedLoopProducer(cfg, processor, rank=rank)
    if cfg.dataserver.enabled:
        from mmrl.dataserver.producer import SynGRPOProducer  # it builds on TaskProducer, defined above

        return SynGRPOProducer(cfg, processor, rank=rank)
    return TaskProducer(cfg, processor, rank=rank)
