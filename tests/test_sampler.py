"""The multi-domain window sampler, on in-memory tasks whose every value the test knows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lram.data.episode import returns_to_go
from lram.data.sampler import DomainData, SamplerConfig, SamplerDataset, WindowSampler, split_episodes
from lram.models import LRAMConfig, LRAMPolicy


class MemoryTask:
    """The TaskData read interface over episodes held in memory (values encode task/episode/step)."""

    def __init__(self, task: str, lengths, obs_dim=5, act_dim=3, discrete=False, tid=0):
        self.task, self.discrete = task, discrete
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.obs_shape = (obs_dim,)
        self.eps = []
        for e, L in enumerate(self.lengths):
            t = np.arange(L, dtype=np.float32)
            states = np.zeros((L, obs_dim), np.float32)
            states[:, 0], states[:, 1], states[:, 2] = tid, e, t  # every step says where it comes from
            rewards = (e + 1) * 0.01 + t * 0.001
            actions = (t % 4).astype(np.int64) if discrete else np.tile(np.linspace(-1, 1, act_dim), (L, 1)).astype(np.float32)
            self.eps.append({"states": states, "actions": actions, "rewards": rewards.astype(np.float32),
                             "dones": np.arange(L) == L - 1, "returns_to_go": returns_to_go(rewards)})
        self.returns = np.array([e["rewards"].sum() for e in self.eps])
        self.stems, self.path = [str(i) for i in range(len(self.lengths))], task

    def read(self, i, start=0, end=None, fields=("states", "actions", "rewards", "dones", "returns_to_go")):
        return {f: self.eps[i][f][start:end] for f in fields}


def make_sampler(split="train", **cfg):
    mw = DomainData("metaworld", [MemoryTask("reach", [200] * 30, tid=1), MemoryTask("push", [200] * 10, obs_dim=7, tid=2)],
                    reward_scale=200.0)
    atari = DomainData("atari", [MemoryTask("pong", [40, 300, 120, 80] * 5, discrete=True, tid=3)], reward_scale=20.0,
                       num_actions=6)
    return WindowSampler([mw, atari], SamplerConfig(**{"context": 50, "batch_size": 16, **cfg}), split=split)


def test_round_robin_domains_and_batch_contents():
    s = make_sampler()
    for step in range(4):
        name, b = s.batch(step)
        assert name == ["metaworld", "atari"][step % 2]
        assert b.states.shape[:2] == (16, 50) and b.timestep_mask.shape == (16, 50)
        assert b.discrete == (name == "atari")
        assert b.reward_scale == (200.0 if name == "metaworld" else 20.0)
        if name == "metaworld":
            assert b.states.shape[2] == 7 and b.actions.shape == (16, 50, 8)  # widest task, actions padded to 8
            assert set(b.action_dims.tolist()) == {3}
            assert torch.all(b.actions[..., 3:] == 0)


def test_windows_are_exact_left_padded_slices():
    s = make_sampler()
    tasks = {1: s.domains[0].data.tasks[0], 2: s.domains[0].data.tasks[1], 3: s.domains[1].data.tasks[0]}
    for step in range(6):
        _, b = s.batch(step)
        for row in range(16):
            m = b.timestep_mask[row]
            n = int(m.sum())
            assert torch.all(m[50 - n:]) and not torch.any(m[: 50 - n])  # left padding only
            code = b.states[row, 50 - n:, :3].numpy().astype(int)
            tid, ep, t0 = code[0]
            task = tasks[tid]
            t_end = t0 + n  # exclusive
            ref = task.read(ep, t0, t_end)
            assert np.array_equal(b.states[row, 50 - n:, : task.obs_shape[0]].numpy(), ref["states"])
            assert np.allclose(b.returns_to_go[row, 50 - n:].numpy(), ref["returns_to_go"])
            assert np.allclose(b.rewards[row, 50 - n:].numpy(), ref["rewards"])
            expected_prev = task.eps[ep]["rewards"][t0 - 1] if t0 > 0 else 0.0
            assert abs(float(b.prev_reward[row]) - expected_prev) < 1e-6
            assert bool(b.first_step[row, 50 - n]) == (t0 == 0)
            assert n == min(50, t_end)  # windows are full unless they start at the episode start


def test_episodes_drawn_in_proportion_to_length_and_final_steps_reachable():
    s = make_sampler(batch_size=64)
    counts, ends = {}, set()
    for step in range(1, 400, 2):  # atari steps
        _, b = s.batch(step)
        for row in range(64):
            n = int(b.timestep_mask[row].sum())
            _, ep, t0 = b.states[row, 50 - n, :3].int().tolist()
            L = [40, 300, 120, 80][ep % 4]
            counts[L] = counts.get(L, 0) + 1
            ends.add(t0 + n == L)
    total = sum(counts.values())
    for L, c in counts.items():
        expected = L / 540
        assert abs(c / total - expected) < 0.03, (L, c / total, expected)
    assert True in ends  # an episode's final step can end a window


def test_validation_split_is_fixed_disjoint_and_small():
    lengths = np.random.default_rng(0).integers(50, 500, size=400)
    a = split_episodes(lengths, 0.025, 1, "reach")
    assert a.sum() == 10 and np.array_equal(a, split_episodes(lengths, 0.025, 1, "reach"))
    assert not np.array_equal(a, split_episodes(lengths, 0.025, 1, "push"))
    train, valid = make_sampler(), make_sampler("valid")
    tr = {(d.data.name, int(t), int(e)) for d in train.domains for t, e in zip(d.task_of, d.episode_of)}
    va = {(d.data.name, int(t), int(e)) for d in valid.domains for t, e in zip(d.task_of, d.episode_of)}
    # round(0.025 * 30) = 1 held out from reach, none from push (10) and pong (20)
    assert tr.isdisjoint(va) and len(va) == 1 and len(tr) == 30 + 10 + 20 - 1
    assert valid.skipped == ["atari"]  # too small to hold out a trajectory


def test_deterministic_resumable_and_rank_specific():
    a, b = make_sampler(), make_sampler()
    assert torch.equal(a.batch(7)[1].states, b.batch(7)[1].states)
    # two ranks with half the batch each read exactly the two halves of the one-process batch
    half = SamplerConfig(**{**a.config.__dict__, "batch_size": 8})
    r0, r1 = (WindowSampler([d.data for d in a.domains], half, rank=r, world_size=2) for r in (0, 1))
    assert r1.domain_at(7) == a.domain_at(7)
    assert torch.equal(torch.cat([r0.batch(7)[1].states, r1.batch(7)[1].states]), a.batch(7)[1].states)
    stream = a.stream(start_step=5)
    assert torch.equal(next(stream)[1].states, b.batch(5)[1].states)
    loader = torch.utils.data.DataLoader(SamplerDataset(a, start_step=3), batch_size=None, num_workers=2)
    it = iter(loader)
    for step in range(3, 7):
        name, batch = next(it)
        assert name == b.batch(step)[0] and torch.equal(batch.states, b.batch(step)[1].states)


def test_in_context_windows_span_consecutive_episodes():
    task = MemoryTask("darkroom_3_4", [20] * 8, obs_dim=3, discrete=True, tid=4)
    s = WindowSampler([DomainData("darkroom", [task], in_context=True, num_actions=5)],
                      SamplerConfig(context=50, batch_size=8, valid_fraction=0.0))
    _, b = s.batch(0)
    for row in range(8):
        n = int(b.timestep_mask[row].sum())
        eps, ts = b.states[row, 50 - n:, 1].int().numpy(), b.states[row, 50 - n:, 2].int().numpy()
        assert np.all(np.diff(eps) >= 0) and np.all(np.diff(eps) <= 1)  # consecutive episodes in order
        assert np.all((np.diff(ts) == 1) | (np.diff(eps) == 1))
        starts = np.nonzero(b.first_step[row, 50 - n:].numpy())[0]
        assert np.array_equal(starts, np.nonzero(ts == 0)[0])
        assert n == min(50, int(eps[-1]) * 20 + int(ts[-1]) + 1)


def test_domain_without_return_condition_has_zero_return_to_go():
    """return_condition=False (in-context RL as Algorithm Distillation): that domain's windows carry a
    return-to-go of 0, the other domains' keep theirs, nothing else changes."""
    tasks = [MemoryTask("darkroom_3_4", [20] * 8, obs_dim=3, discrete=True, tid=4)]
    cfg = SamplerConfig(context=30, batch_size=4, valid_fraction=0.0)
    with_rtg = WindowSampler([DomainData("darkroom", tasks, in_context=True, num_actions=5)], cfg)
    without = WindowSampler([DomainData("darkroom", tasks, in_context=True, num_actions=5, return_condition=False)], cfg)
    _, a = with_rtg.batch(3)
    _, b = without.batch(3)
    assert a.returns_to_go[a.timestep_mask].abs().min() > 0
    assert torch.count_nonzero(b.returns_to_go) == 0
    assert torch.equal(a.states, b.states) and torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)


def test_batches_train_the_policy():
    """A few optimizer steps on one continuous and one discrete batch fit them: the loss falls well below its
    start in both domains, continuous actions approach their targets and discrete ones get predicted."""
    torch.manual_seed(0)
    s = make_sampler(batch_size=4, context=10)
    model = LRAMPolicy(LRAMConfig(backbone="xlstm", d_model=32, num_blocks=1, use_images=False))
    batches = [s.batch(step)[1] for step in range(2)]
    assert [b.discrete for b in batches] == [False, True]

    def evaluate():
        with torch.no_grad():
            return [(float(loss), metrics) for loss, metrics in map(model.loss, batches)]

    before = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        loss, metrics = model.loss(batches[step % 2])
        assert torch.isfinite(loss) and metrics["tokens"] > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    (mw0, mw_m0), (at0, at_m0) = before
    (mw1, mw_m1), (at1, at_m1) = evaluate()
    assert mw1 < 0.5 * mw0 and at1 < 0.5 * at0, (mw0, mw1, at0, at1)
    assert mw_m1["action_mse"] < 0.1 * mw_m0["action_mse"]
    assert at_m1["accuracy"] >= at_m0["accuracy"] + 0.15


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="within"):
        make_sampler(within="tasks")
    with pytest.raises(ValueError, match=r"domain_weights: unknown domain\(s\) \['dmc'\]"):
        make_sampler(domain_order="weighted", domain_weights={"dmc": 1.0})


def test_broken_episode_is_never_trained_on():
    task = MemoryTask("reach", [30] * 4)
    task.eps[2]["rewards"][5] = float("nan")
    s = WindowSampler([DomainData("metaworld", [task])], SamplerConfig(context=50, batch_size=8, valid_fraction=0.0))
    with pytest.raises(Exception, match="episode 2: field 'rewards': contains NaN/inf"):
        for step in range(20):
            s.batch(step)


def test_state_normalisation_statistics_and_windows():
    """state_statistics: per-dimension mean / std over the domain's episodes (numpy's, for tasks of different
    widths; constant dimensions keep std 1); the sampler standardises real dimensions, padding stays 0."""
    from lram.data.normalization import state_statistics

    tasks = [MemoryTask("reach", [30, 50], obs_dim=5, tid=1), MemoryTask("push", [40], obs_dim=7, tid=2)]
    mean, std = state_statistics(tasks)
    rows5 = np.concatenate([t.eps[i]["states"][:, :5] for t in tasks for i in range(len(t.lengths))])
    rows7 = tasks[1].eps[0]["states"]
    assert np.allclose(mean[:5], rows5.mean(0), atol=1e-5) and np.allclose(mean[5:], rows7[:, 5:].mean(0), atol=1e-5)
    want_std = rows5.std(0)
    want_std[want_std < 1e-6] = 1.0
    assert np.allclose(std[:5], want_std, rtol=1e-4)
    assert np.all(std[3:5] == 1.0)  # constant (zero) columns
    dom = DomainData("metaworld", tasks, reward_scale=1.0, state_mean=mean, state_std=std)
    raw = DomainData("metaworld", tasks, reward_scale=1.0)
    cfg = SamplerConfig(context=20, batch_size=6, valid_fraction=0.0)
    _, b = WindowSampler([dom], cfg).batch(2)
    _, r = WindowSampler([raw], cfg).batch(2)
    m = r.timestep_mask
    w = r.states.shape[-1]  # the batch's widest task
    assert torch.allclose(b.states[m], (r.states[m] - torch.from_numpy(mean[:w])) / torch.from_numpy(std[:w]), atol=1e-5)
    assert torch.count_nonzero(b.states[~m]) == 0
