"""The LRAM policy: acting step by step equals the parallel forward; padding, masking and decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lram.models import LRAMConfig, LRAMPolicy, TrajectoryBatch

D = 64
BACKBONES = {
    "xlstm": dict(backbone="xlstm", num_blocks=2, backbone_options={"slstm_at": [1]}),
    "mamba": dict(backbone="mamba", num_blocks=2),
    "transformer": dict(backbone="transformer", num_blocks=2, backbone_options={"head_dim": 16}),
}


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make_policy(name, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = LRAMConfig(d_model=D, **{**BACKBONES[name], **overrides})
    model = LRAMPolicy(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every weight off its init value (e.g. zero recurrent weights)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def random_episode(B, T, discrete, image=False, act_dim=4, state_dim=39, seed=0):
    g = torch.Generator().manual_seed(seed)
    if image:
        states = torch.randint(0, 256, (B, T, 3, 64, 64), generator=g, dtype=torch.uint8)
    else:
        states = torch.randn(B, T, state_dim, generator=g)
    rewards = torch.rand(B, T, generator=g) * 3
    rtg = rewards.flip(1).cumsum(1).flip(1) + 1.0
    if discrete:
        actions = torch.randint(0, 6, (B, T), generator=g)
    else:
        actions = torch.rand(B, T, act_dim, generator=g) * 2 - 1
    return states, rewards, rtg, actions


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("discrete,image", [(True, True), (False, False)])
def test_acting_step_by_step_equals_parallel_forward(name, discrete, image):
    model = make_policy(name)
    B, T = 2, 12 if image else 30
    states, rewards, rtg, actions = random_episode(B, T, discrete, image)
    batch = TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, actions=actions, discrete=discrete,
                            num_actions=6, action_dims=4, reward_scale=torch.tensor([2.0, 20.0]))
    with torch.no_grad():
        out = model(batch)
    agent = model.make_agent(B, discrete=discrete, num_actions=6, action_dims=4, reward_scale=torch.tensor([2.0, 20.0]))
    prev_r = torch.full((B,), 123.0)  # ignored at the first step: rows start fresh
    for t in range(T):
        a = agent.act(states[:, t], prev_r, rtg[:, t])
        assert rel_err(agent.last_logits, out.logits[:, t]) <= 1e-4, f"t={t}"
        expected = model.decode(out.logits[:, t], discrete, num_actions=6, action_dims=4)
        assert torch.equal(a, expected)
        if discrete:
            assert int(a.max()) < 6
        else:
            assert torch.all(a[:, 4:] == 0)
        prev_r = rewards[:, t]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_agent_reset_rows_restart_episodes(name):
    model = make_policy(name)
    B, T1, T2 = 3, 8, 10
    states, rewards, rtg, _ = random_episode(B, T1 + T2, discrete=False)
    agent = model.make_agent(B, discrete=False, action_dims=4, reward_scale=5.0)
    prev_r = torch.zeros(B)
    for t in range(T1):
        agent.act(states[:, t], prev_r, rtg[:, t])
        prev_r = rewards[:, t]
    agent.reset(torch.tensor([False, True, False]))
    logits = []
    for t in range(T1, T1 + T2):
        agent.act(states[:, t], prev_r, rtg[:, t])
        logits.append(agent.last_logits)
        prev_r = rewards[:, t]
    logits = torch.stack(logits, 1)
    with torch.no_grad():
        fresh = model(TrajectoryBatch(states=states[1:2, T1:], returns_to_go=rtg[1:2, T1:],
                                      rewards=rewards[1:2, T1:], reward_scale=5.0))
        full = model(TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, reward_scale=5.0))
    assert rel_err(logits[1:2], fresh.logits) <= 1e-4
    assert rel_err(logits[[0, 2]], full.logits[[0, 2], T1:]) <= 1e-4


@pytest.mark.parametrize("name", list(BACKBONES))
def test_padding_is_invisible(name):
    """A left- or right-padded window gives the same logits on its real timesteps as the unpadded one."""
    model = make_policy(name)
    T, pad = 16, 5
    states, rewards, rtg, actions = random_episode(1, T, discrete=False)
    with torch.no_grad():
        ref = model(TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, reward_scale=3.0)).logits
        for left in (True, False):
            def p(x, left=left):
                z = torch.zeros(1, pad, *x.shape[2:], dtype=x.dtype) + (7.0 if x.is_floating_point() else 0)
                return torch.cat([z, x] if left else [x, z], dim=1)
            ones, zeros = torch.ones(1, T, dtype=torch.bool), torch.zeros(1, pad, dtype=torch.bool)
            mask = torch.cat([zeros, ones] if left else [ones, zeros], dim=1)
            out = model(TrajectoryBatch(states=p(states), returns_to_go=p(rtg), rewards=p(rewards),
                                        timestep_mask=mask, reward_scale=3.0)).logits
            real = out[:, pad:] if left else out[:, :T]
            assert rel_err(real, ref) <= 1e-4


def test_action_condition_acting_equals_forward():
    model = make_policy("xlstm", action_condition=True)
    B, T = 2, 10
    states, rewards, rtg, _ = random_episode(B, T, discrete=False)
    agent = model.make_agent(B, discrete=False, action_dims=3, reward_scale=1.0)
    taken, logits, prev_r = [], [], torch.zeros(B)
    for t in range(T):
        a = agent.act(states[:, t], prev_r, rtg[:, t])
        taken.append(a[:, :3])
        logits.append(agent.last_logits)
        prev_r = rewards[:, t]
    actions = torch.stack(taken, 1)
    assert model.config.tokens_per_step == 11
    with torch.no_grad():
        out = model(TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, actions=actions, action_dims=3))
    assert rel_err(torch.stack(logits, 1), out.logits) <= 1e-4


def test_loss_masks_padding_and_matches_manual_ce():
    model = make_policy("xlstm")
    B, T = 3, 9
    states, rewards, rtg, actions = random_episode(B, T, discrete=False, act_dim=8)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    dims = torch.tensor([4, 8, 2])
    batch = TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, actions=actions,
                            timestep_mask=mask, action_dims=dims, reward_scale=1.0)
    loss, metrics = model.loss(batch)
    # changing targets where nothing is valid must not change the loss
    a2 = actions.clone()
    a2[0, :4] = -0.77
    a2[0, :, 4:] = 0.9
    a2[2, :, 2:] = -0.3
    loss2, _ = model.loss(TrajectoryBatch(**{**batch.__dict__, "actions": a2}))
    assert torch.allclose(loss, loss2)
    # manual CE over valid (timestep, dim) entries
    with torch.no_grad():
        logits = model(batch).logits
    tok = model.tokenizer.encode_continuous(actions)
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            for d in range(int(dims[b])):
                total += F.cross_entropy(logits[b, t, d][None], tok[b, t, d][None]).item()
                count += 1
    assert abs(loss.item() - total / count) < 1e-5
    assert metrics["tokens"] == count
    bare, none = model.loss(batch, metrics=False)  # the training step's form: the same loss, no diagnostics
    assert torch.equal(bare, loss) and none == {}


def test_discrete_loss_uses_first_slot_only():
    model = make_policy("mamba")
    states, rewards, rtg, actions = random_episode(2, 6, discrete=True, image=True)
    batch = TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, actions=actions, discrete=True)
    loss, m = model.loss(batch)
    with torch.no_grad():
        logits = model(batch).logits[:, :, 0]
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), actions.reshape(-1))
    assert abs(loss.item() - manual.item()) < 1e-5 and m["tokens"] == 12


def test_decoding_restricts_to_valid_actions():
    model = make_policy("xlstm")
    logits = torch.zeros(2, 8, 274)
    logits[:, 0, 17] = 10.0  # the best id is invalid for a 6-action env
    logits[:, 0, 4] = 5.0
    assert model.decode(logits, True, num_actions=6).tolist() == [4, 4]
    logits[:, :, 3] = 100.0  # discrete ids never win in continuous decoding
    logits[:, :, 18 + 200] = 1.0
    vals = model.decode(logits, False, action_dims=torch.tensor([2, 8]))
    expected = -1 + (200 + 0.5) * 2 / 256
    assert torch.allclose(vals[0, :2], torch.tensor(expected)) and torch.all(vals[0, 2:] == 0)
    assert torch.allclose(vals[1], torch.full((8,), expected))


def test_bad_inputs_name_the_argument():
    model = make_policy("xlstm")
    states, rewards, rtg, actions = random_episode(2, 5, discrete=True, image=False)
    ok = dict(states=states, returns_to_go=rtg, rewards=rewards, actions=actions, discrete=True)
    with pytest.raises(ValueError, match=r"actions: values must lie in \[0, 17\], got 18"):
        model(TrajectoryBatch(**{**ok, "actions": actions.masked_fill(actions == actions[0, 0], 18)}))
    with pytest.raises(ValueError, match="returns_to_go: contains NaN"):
        model(TrajectoryBatch(**{**ok, "returns_to_go": rtg.masked_fill(rtg > rtg.median(), float("nan"))}))
    with pytest.raises(ValueError, match=r"rewards: expected shape \[2, 5\]"):
        model(TrajectoryBatch(**{**ok, "rewards": rewards[:, :4]}))
    with pytest.raises(ValueError, match="states: at most 204 features, got 300"):
        model(TrajectoryBatch(**{**ok, "states": torch.randn(2, 5, 300)}))
    with pytest.raises(ValueError, match="states: expected dtype torch.uint8"):
        model(TrajectoryBatch(**{**ok, "states": torch.rand(2, 5, 3, 64, 64)}))
    with pytest.raises(ValueError, match="timestep_mask: row 1 has gaps"):
        model(TrajectoryBatch(**{**ok, "timestep_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1]]).bool()}))
    agent = model.make_agent(2, discrete=True, num_actions=6)
    with pytest.raises(ValueError, match=r"obs: expected shape \[2, \*\]"):
        agent.act(torch.randn(3, 39), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"num_actions: values must lie in \[1, 18\]"):
        model.make_agent(2, discrete=True, num_actions=19)


@pytest.mark.parametrize("rtg,reward", [(False, True), (True, False), (False, False)])
def test_conditioning_switches(rtg, reward):
    """Dropping RTG and/or reward tokens: fewer tokens per step, and acting still equals the forward."""
    model = make_policy("xlstm", rtg_condition=rtg, reward_condition=reward)
    assert model.config.tokens_per_step == 1 + int(rtg) + int(reward)
    assert (model.embed_rtg is None) != rtg and (model.embed_reward is None) != reward
    B, T = 2, 8
    states, rewards, rtg_v, _ = random_episode(B, T, discrete=False)
    agent = model.make_agent(B, discrete=False, action_dims=4)
    logits, prev_r = [], torch.zeros(B)
    for t in range(T):
        agent.act(states[:, t], prev_r, rtg_v[:, t])
        logits.append(agent.last_logits)
        prev_r = rewards[:, t]
    with torch.no_grad():
        out = model(TrajectoryBatch(states=states, returns_to_go=rtg_v, rewards=rewards))
    assert rel_err(torch.stack(logits, 1), out.logits) <= 1e-4
    # without reward conditioning the rewards cannot matter; without RTG the returns cannot
    with torch.no_grad():
        other = model(TrajectoryBatch(states=states, returns_to_go=rtg_v * (1 if rtg else 5),
                                      rewards=rewards * (1 if reward else -3)))
    assert rel_err(other.logits, out.logits) <= 1e-6


def test_compiled_agent_matches_eager():
    model = make_policy("xlstm")
    states, rewards, rtg, _ = random_episode(1, 4, discrete=False)
    eager = model.make_agent(1, discrete=False, action_dims=4)
    compiled = model.make_agent(1, discrete=False, action_dims=4, compile=True)
    prev_r = torch.zeros(1)
    for t in range(4):
        a = eager.act(states[:, t], prev_r, rtg[:, t])
        b = compiled.act(states[:, t], prev_r, rtg[:, t])
        assert rel_err(compiled.last_logits, eager.last_logits) <= 1e-4 and torch.equal(a, b)
        prev_r = rewards[:, t]


@pytest.mark.parametrize("name", ["xlstm", "mamba"])
def test_in_context_windows_across_episodes_match_agent_keeping_context(name):
    """A window spanning two episodes (first_step marks the second's start) equals an agent that keeps its
    recurrent context across the episode boundary (reset with keep_context=True)."""
    model = make_policy(name, action_condition=True)
    T1, T2 = 6, 7
    states, rewards, rtg, actions = random_episode(1, T1 + T2, discrete=True)
    first = torch.zeros(1, T1 + T2, dtype=torch.bool)
    first[0, T1] = True
    with torch.no_grad():
        out = model(TrajectoryBatch(states=states, returns_to_go=rtg, rewards=rewards, actions=actions,
                                    discrete=True, first_step=first))
    agent = model.make_agent(1, discrete=True)
    logits, prev_r = [], torch.zeros(1)
    for t in range(T1 + T2):
        if t == T1:
            agent.reset(keep_context=True)
        agent.act(states[:, t], prev_r, rtg[:, t])
        agent.prev_action_tokens = model.action_tokens(actions[:, t], True)  # teacher-force the stored action
        logits.append(agent.last_logits)
        prev_r = rewards[:, t]
    assert rel_err(torch.stack(logits, 1), out.logits) <= 1e-4


def test_agent_standardises_observations_with_the_domains_statistics():
    """An agent given the domain's state_mean / state_std acts on raw observations exactly as an agent without
    them acts on standardised ones (what training saw)."""
    torch.manual_seed(0)
    model = LRAMPolicy.from_preset("tiny", "xlstm[1:0]", use_images=False).eval()
    mean, std = torch.randn(7), torch.rand(7) + 0.5
    a = model.make_agent(2, discrete=False, action_dims=3, reward_scale=10.0, state_mean=mean, state_std=std)
    b = model.make_agent(2, discrete=False, action_dims=3, reward_scale=10.0)
    for _ in range(4):
        obs, r, rtg = torch.randn(2, 7) * 3, torch.rand(2), torch.rand(2) * 50
        assert torch.equal(a.act(obs, r, rtg), b.act((obs - mean) / std, r, rtg))
    with pytest.raises(ValueError, match="state_mean, state_std"):
        model.make_agent(1, discrete=False, action_dims=3, state_mean=mean)
    with pytest.raises(ValueError, match="obs: 9 features"):
        a.act(torch.randn(2, 9), torch.zeros(2), torch.zeros(2))
