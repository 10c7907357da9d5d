"""SynGRPOProducer with the real tiny model, HF engine and WorkerPool: the synthesized share, stale samples,
matured descriptions trained off-policy, a slow synthesizer that never stalls a step, the trainer's
behaviour-log-prob ratio, and a short `mmrl train` run with the data server on (slow)."""

import time

import numpy as np
import pytest
import torch

from mmrl.config import RunConfig, load_config
from mmrl.contracts import Rollout
from mmrl.dataserver.producer import WAIT_THRESHOLD_S, SynGRPOProducer
from mmrl.dataserver.synthesizers import IdentitySynthesizer
from mmrl.dataserver.workers import WorkerPool
from mmrl.grpo.trainer import old_logprobs
from mmrl.producers import make_producer
from mmrl.rollout import make_engine
from mmrl.rollout.forward import collate, completion_logprobs


def config(*overrides: str) -> RunConfig:
    return load_config(RunConfig, None, [
        "data.sources.0.task=dominant_color", "rollout.n=4", "rollout.max_new_tokens=4", "data.prompts_per_step=4",
        "data.eval_samples=0", "dataserver.enabled=true", "dataserver.backend=inprocess",
        "dataserver.synthesizer=identity", "dataserver.syn_fraction=0.5", "dataserver.descriptions_per_step=2",
        "dataserver.desc_max_new_tokens=4", "dataserver.max_staleness=8",
        "dataserver.desc_answer_mode=raw", *overrides])  # fmt: skip


def drain(pool: WorkerPool, timeout: float = 20.0) -> None:
    """Test-side wait until the pool has synthesized everything submitted (the producer never waits)."""
    end = time.time() + timeout
    while time.time() < end:
        m = pool.metrics()
        done = m.get("dataserver/accepted", 0) + sum(v for k, v in m.items() if k.startswith("dataserver/rejected/"))
        if done >= m.get("dataserver/submitted", 0) and pool.requests.empty():
            return
        time.sleep(0.02)
    raise AssertionError("pool did not finish")


def identity_pool(seed=0, make=None, **kw):
    return WorkerPool(make or (lambda w: IdentitySynthesizer(worker=w)), seed=seed, **kw)


def test_synthesized_share_and_matured_descriptions_trained_off_policy(policy):
    cfg = config()
    pool = identity_pool()
    producer = SynGRPOProducer(cfg, policy[1], backend=pool)
    engine = make_engine(cfg.rollout, *policy)
    seen_desc = []
    try:
        for step in range(3):
            rollouts, m = producer.produce(engine, step)
            drain(pool)
            assert m["syn/share"] <= cfg.dataserver.syn_fraction
            groups = {r.group_id for r in rollouts if r.task == "dominant_color"}
            assert len(groups) == cfg.data.prompts_per_step
            syn = [r for r in rollouts if r.meta.get("synthesized")]
            desc = [r for r in rollouts if r.task == "syn_description"]
            if step == 0:
                assert not syn and not desc and m["syn/submitted"] == 2
            else:
                assert len({r.group_id for r in syn}) == 2 and m["syn/share"] == 0.5
                assert "frac_zero_std_groups/synthesized" in m and "frac_zero_std_groups/original" in m
                assert len(desc) == 2 and all(r.meta["off_policy"] and r.meta["policy_version"] == step - 1
                                              for r in desc)  # fmt: skip
                assert m["desc/version_lag"] == 1.0 and 0.0 <= m["desc/r_div"] <= 1.0
                # r_desc = 0.1 * valid + 0.9 * 4 Var(accuracy of the synthesized sample's 4 rollouts)
                for r in desc:
                    group = [x for x in syn if x.sample_id.endswith("~" + r.meta["request_id"])]
                    acc = np.array([x.reward_parts["accuracy"] for x in group])
                    assert r.reward == pytest.approx(0.1 + 0.9 * 4 * acc.var())
                seen_desc += desc
        assert "desc/baseline" in m and m["dataserver/ready_queue"] >= 0
        assert producer.state_dict()["pool"]["counters"][0] > 0
    finally:
        producer.close()
    # raw mode: the description is the policy's own reply, whatever the untrained model wrote
    assert seen_desc and all(r.completion.text.strip() for r in seen_desc)


def test_stale_samples_are_dropped_and_never_trained(policy):
    cfg = config("dataserver.max_sample_age=1")
    pool = identity_pool()
    producer = SynGRPOProducer(cfg, policy[1], backend=pool)
    engine = make_engine(cfg.rollout, *policy)
    try:
        producer.produce(engine, 0)
        drain(pool)
        rollouts, m = producer.produce(engine, 5)  # samples written at version 0 are 5 versions old
        assert not any(r.meta.get("synthesized") for r in rollouts) and m["syn/share"] == 0.0
        assert m["syn/dropped_samples/stale"] == 2 and m["desc/dropped/sample_stale"] == 2
    finally:
        producer.close()


class SlowSynthesizer(IdentitySynthesizer):
    """Takes 0.4 s per request, far slower than a tiny-model step."""

    name = "slow"

    def __call__(self, request, rng):
        time.sleep(0.4)
        return super().__call__(request, rng)


def test_a_slow_synthesizer_never_makes_a_step_wait(policy):
    cfg = config("dataserver.descriptions_per_step=4", "dataserver.request_queue=3")
    pool = identity_pool(make=lambda w: SlowSynthesizer(worker=w), request_queue=3)
    producer = SynGRPOProducer(cfg, policy[1], backend=pool)
    engine = make_engine(cfg.rollout, *policy)
    try:
        for step in range(3):
            t0 = time.perf_counter()
            _, m = producer.produce(engine, step)
            assert m["dataserver/step_waited"] == 0.0, m["dataserver/backend_s"]
            assert m["dataserver/backend_s"] < WAIT_THRESHOLD_S < time.perf_counter() - t0
        assert m["syn/submit_refused"] > 0 and m["desc/dropped/refused"] > 0  # a full queue refuses, never blocks
        assert m["dataserver/waited_share"] == 0.0
    finally:
        producer.close()


def test_make_producer_returns_the_syn_producer_when_enabled(policy):
    producer = make_producer(config(), policy[1])
    try:
        assert isinstance(producer, SynGRPOProducer) and isinstance(producer.backend, WorkerPool)
    finally:
        producer.close()
    assert not isinstance(make_producer(config("dataserver.enabled=false"), policy[1]), SynGRPOProducer)


def test_stale_rollouts_use_behaviour_logprobs_in_the_ratio(policy):
    model, processor = policy
    cfg = config()
    producer = SynGRPOProducer(cfg, processor, backend=identity_pool())
    try:
        prompt = producer.pool.prepare(0, 0, 0).prompt
    finally:
        producer.close()
    completion = make_engine(cfg.rollout, model, processor).generate([prompt], 1, _sampling(cfg))[0][0]
    rows = [Rollout(prompt, completion, 0.0, 1.0, "g", "s", "t", meta=meta) for meta in ({}, {"off_policy": True})]
    batch = collate([prompt] * 2, [completion.token_ids] * 2, processor.tokenizer.pad_token_id)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # a policy update after the rollout was sampled
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            current, _, mask = completion_logprobs(model, batch, temperature=cfg.rollout.temperature)
        ratio = torch.exp(current - old_logprobs(rows, current.detach()))[:, : mask.shape[1]]
        assert torch.allclose(ratio[0][mask[0]], torch.ones(int(mask[0].sum())))  # fresh: ratio 1
        assert (ratio[1][mask[1]] - 1).abs().max() > 1e-3  # stale: pi_theta / pi_behaviour
    finally:
        model.load_state_dict(saved)


def _sampling(cfg):
    from mmrl.rollout import sampling_params

    return sampling_params(cfg.rollout, seed=0)


@pytest.mark.slow
def test_train_runs_with_the_data_server_on(tmp_path):
    from mmrl.grpo.trainer import train

    cfg = config("train.steps=3", f"train.out_dir={tmp_path / 'run'}", "log.tensorboard=false", "log.plot=false",
                 "log.progress=false", "train.save_every=2", "dataserver.max_sample_age=2")  # fmt: skip
    run = train(cfg)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 3 and "dataserver/backend_s" in lines[-1] and "syn/share" in lines[-1]
    assert (run / "final").is_dir()
