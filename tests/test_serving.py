"""The gRPC policy server: sessions act exactly like local agents, each with its own state; bad requests are
refused with a status naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

grpc = pytest.importorskip("grpc", reason="the server is tested with the serve extra (pip install -e '.[dev]')")

from lram.models import LRAMPolicy  # noqa: E402
from lram.serving.proto import policy_pb2 as pb  # noqa: E402
from lram.serving.proto import policy_pb2_grpc as pb_grpc  # noqa: E402
from lram.serving.server import start_server  # noqa: E402
from lram.training.checkpoint import save_checkpoint  # noqa: E402

TASK = "darkroom_6_3"
DOMAINS = [
    {"name": "darkroom", "reward_scale": 1.0, "discrete": True, "num_actions": 5, "in_context": False,
     "obs_shape": [2], "action_dim": 1, "tasks": [TASK], "max_returns": {TASK: 40.0}},
    {"name": "metaworld", "reward_scale": 200.0, "discrete": False, "num_actions": None, "in_context": False,
     "obs_shape": [39], "action_dim": 4, "tasks": ["reach-v3"], "max_returns": {"reach-v3": 1800.0}},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.manual_seed(0)
    policy = LRAMPolicy.from_preset("tiny", "xlstm[1:0]", use_images=False).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    run = tmp_path_factory.mktemp("serve") / "run"
    save_checkpoint(run, 1, policy, {}, DOMAINS)
    server, port = start_server(run, "127.0.0.1:0", max_sessions=3)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield policy, pb_grpc.PolicyServiceStub(channel)
    channel.close()
    server.stop(grace=None)


def local_actions(policy, discrete, obs_seq, rewards, target, dims):
    """What a local batch-1 agent does with the same inputs (the reference)."""
    agent = policy.make_agent(1, discrete=discrete, num_actions=5 if discrete else None,
                              action_dims=None if discrete else dims, reward_scale=1.0 if discrete else 200.0)
    out, rtg, prev = [], target, 0.0
    for obs, r in zip(obs_seq, rewards):
        with torch.inference_mode():
            a = agent.act(torch.tensor(obs)[None], torch.tensor([prev]), torch.tensor([rtg]))
        out.append(int(a) if discrete else a[0, :dims].numpy())
        prev, rtg = r, rtg - r
    return out


def test_interleaved_sessions_act_like_local_agents(served):
    policy, stub = served
    rng = np.random.default_rng(0)
    seqs = {"darkroom": [rng.integers(0, 10, 2).astype(np.float32) for _ in range(6)],
            "metaworld": [rng.normal(size=39).astype(np.float32) for _ in range(6)]}
    rewards = {"darkroom": [0.0, 1.0, 0.0, 1.0, 1.0, 0.0], "metaworld": list(rng.random(6).astype(np.float32))}
    sessions = {d: stub.OpenSession(pb.OpenSessionRequest(domain=d)) for d in seqs}
    assert sessions["darkroom"].discrete and not sessions["metaworld"].discrete
    assert sessions["metaworld"].action_dim == 4 and list(sessions["metaworld"].observation_shape) == [39]
    got = {d: [] for d in seqs}
    for t in range(6):  # the two sessions' steps interleave: each keeps its own state
        for d in seqs:
            prev = rewards[d][t - 1] if t else 0.0
            resp = stub.Act(pb.ActRequest(session_id=sessions[d].session_id, observation=seqs[d][t].tolist(),
                                          reward=prev, episode_start=t == 0))
            got[d].append(resp.discrete_action if d == "darkroom" else np.array(resp.action, dtype=np.float32))
            assert resp.step == t + 1
    assert got["darkroom"] == local_actions(policy, True, seqs["darkroom"], rewards["darkroom"], 40.0, 1)
    ref = local_actions(policy, False, seqs["metaworld"], rewards["metaworld"], 1800.0, 4)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(got["metaworld"], ref))
    # a new episode restarts the state: the same first observation gives the same first action
    again = stub.Act(pb.ActRequest(session_id=sessions["darkroom"].session_id, observation=seqs["darkroom"][0].tolist(),
                                   episode_start=True))
    assert again.discrete_action == got["darkroom"][0] and again.step == 1 and again.return_to_go == 40.0
    for s in sessions.values():
        stub.CloseSession(pb.CloseSessionRequest(session_id=s.session_id))
    assert stub.Info(pb.InfoRequest()).sessions == 0


def test_bad_requests_name_the_problem(served):
    _, stub = served
    cases = [
        (lambda: stub.OpenSession(pb.OpenSessionRequest(domain="atari")), grpc.StatusCode.INVALID_ARGUMENT, "domain"),
        (lambda: stub.Act(pb.ActRequest(session_id="nope", observation=[1.0])), grpc.StatusCode.NOT_FOUND, "session_id"),
    ]
    sid = stub.OpenSession(pb.OpenSessionRequest(domain="darkroom")).session_id
    cases += [
        (lambda: stub.Act(pb.ActRequest(session_id=sid, observation=[0.0] * 500)), grpc.StatusCode.INVALID_ARGUMENT,
         "observation: expected 1..204"),
        (lambda: stub.Act(pb.ActRequest(session_id=sid, observation=[float("nan"), 1.0])), grpc.StatusCode.INVALID_ARGUMENT,
         "NaN"),
        (lambda: stub.Act(pb.ActRequest(session_id=sid, image=b"\x00" * 10)), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ]
    for call, code, text in cases:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == code and text in e.value.details()
    extra = [stub.OpenSession(pb.OpenSessionRequest(domain="darkroom")).session_id for _ in range(2)]  # max 3
    with pytest.raises(grpc.RpcError) as e:
        stub.OpenSession(pb.OpenSessionRequest(domain="darkroom"))
    assert "too many sessions" in e.value.details()
    for s in [sid, *extra]:
        stub.CloseSession(pb.CloseSessionRequest(session_id=s))


def test_idle_sessions_expire(served):
    from lram.serving.sessions import SessionError, SessionManager

    policy, _ = served
    manager = SessionManager(policy, DOMAINS, max_sessions=2, ttl_s=0.0)
    first, _ = manager.open("darkroom")
    manager.open("darkroom")  # opening expires idle sessions (ttl 0: all of them)
    with pytest.raises(SessionError, match="no open session") as e:
        manager.act(first, torch.zeros(1, 2), 0.0, True)
    assert e.value.not_found


def test_sessions_of_a_domain_mixing_action_sizes_act_per_task():
    """A domain whose tasks have 1-d and 6-d actions (DMControl): a session names its task and acts with that
    task's size, like a local agent of the task; without a task the server asks for one."""
    from lram.models.domain import DomainSpec, TaskSpec
    from lram.models.policy import RecurrentAgent
    from lram.serving.sessions import SessionError, SessionManager

    torch.manual_seed(1)
    policy = LRAMPolicy.from_preset("tiny", "mamba", use_images=False).eval()
    spec = DomainSpec("dmcontrol", False, 100.0, tasks={"cartpole-swingup": TaskSpec("cartpole-swingup", 1, None, (5,), 800.0),
                                                       "walker-stand": TaskSpec("walker-stand", 6, None, (24,), 950.0)})
    manager = SessionManager(policy, [spec])
    with pytest.raises(SessionError, match="mixes action layouts over its tasks; name the task or give action_dim"):
        manager.open("dmcontrol")
    with pytest.raises(SessionError, match="'hopper' is not a task"):
        manager.open("dmcontrol", task="hopper")
    sid, session = manager.open("dmcontrol", task="walker-stand")
    assert session.target_return == 950.0 and session.task.action_dim == 6
    agent = RecurrentAgent.for_task(policy, spec, spec.tasks["walker-stand"], 1)
    rng = np.random.default_rng(0)
    rtg, prev = 950.0, 0.0
    for t in range(4):
        obs = torch.from_numpy(rng.normal(size=(1, 24)).astype(np.float32))
        reward = float(rng.random())
        action, used, step = manager.act(sid, obs, prev, t == 0)
        with torch.inference_mode():
            ref = agent.act(obs, torch.tensor([prev]), torch.tensor([rtg]))[0, :6].numpy()
        assert action.shape == (6,) and used == pytest.approx(rtg) and step == t + 1
        np.testing.assert_allclose(action, ref, atol=1e-6)
        prev, rtg = reward, rtg - reward


def test_open_session_names_its_task(served):
    """OpenSession's task field: the task's action layout, best return and observation shape come back."""
    _, stub = served
    s = stub.OpenSession(pb.OpenSessionRequest(domain="metaworld", task="reach-v3"))
    assert s.action_dim == 4 and s.target_return == 1800.0 and list(s.observation_shape) == [39]
    stub.CloseSession(pb.CloseSessionRequest(session_id=s.session_id))
    with pytest.raises(grpc.RpcError) as e:
        stub.OpenSession(pb.OpenSessionRequest(domain="metaworld", task="push-v3"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'push-v3' is not a task" in e.value.details()
