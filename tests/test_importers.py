"""Importers: source files written by the tests in the real formats, imported values checked against them."""

from __future__ import annotations

import gzip
import io
import json

import h5py
import numpy as np
import pytest

from lram.data.cli import main as data_main
from lram.data.episode import DataError
from lram.data.importers import import_composuite, import_dqn_replay, import_minari, import_robomimic
from lram.data.storage import open_task

RNG = np.random.default_rng(0)


# --- robomimic / MimicGen ------------------------------------------------------------------------------------
def _write_robomimic(path, lengths, success):
    src = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps({"env_name": "Stack_D0"})
        for i, (t, ok) in enumerate(zip(lengths, success)):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = t
            obs = {"robot0_eef_pos": RNG.normal(size=(t, 3)), "robot0_eef_quat": RNG.normal(size=(t, 4)),
                   "object": RNG.normal(size=(t, 5)), "agentview_image": RNG.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)}
            for k, v in obs.items():
                g.create_dataset(f"obs/{k}", data=v)
            actions = RNG.uniform(-1.5, 1.5, size=(t, 7))
            rewards = np.zeros(t)
            if ok:
                rewards[-2:] = 1.0
            dones = np.zeros(t, np.int64)
            dones[-1] = 1
            g.create_dataset("actions", data=actions)
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=dones)
            src[i] = dict(obs=obs, actions=actions, rewards=rewards, dones=dones)
    return src


@pytest.mark.parametrize("layout", ["paper", "packed"])
def test_robomimic_values_sparse_and_resume(tmp_path, layout):
    path = tmp_path / "stack_d0.hdf5"
    src = _write_robomimic(path, [6, 4, 9], [True, False, True])
    res = import_robomimic(path, tmp_path / "out", sparse_reward=True, layout=layout, progress=False)
    assert res["stack_d0"]["written"] == 3
    td = open_task(tmp_path / "out" / "stack_d0")
    assert td.layout == layout and sorted(td.stems, key=int) == ["0", "1", "2"]
    for i, s in src.items():
        ep = td.episode(td.stems.index(str(i))).arrays()
        want = np.concatenate([s["obs"][k] for k in ("object", "robot0_eef_pos", "robot0_eef_quat")], axis=1)
        np.testing.assert_allclose(ep["states"], want.astype(np.float32))  # sorted keys, image left out
        np.testing.assert_allclose(ep["actions"], np.clip(s["actions"], -1, 1).astype(np.float32))
        assert ep["actions"].min() >= -1 and ep["actions"].max() <= 1
        sparse = np.zeros(len(s["rewards"]), np.float32)
        sparse[-1] = float(s["rewards"].max() > 0)
        np.testing.assert_array_equal(ep["rewards"], sparse)
        np.testing.assert_array_equal(ep["returns_to_go"], np.cumsum(sparse[::-1])[::-1])
        np.testing.assert_array_equal(ep["dones"].astype(bool), s["dones"].astype(bool))
    # resume: a second run writes nothing new
    again = import_robomimic(path, tmp_path / "out", sparse_reward=True, layout=layout, progress=False)
    assert again["stack_d0"] == {"written": 0, "skipped": 3, "task": tmp_path / "out" / "stack_d0"}


def test_robomimic_keys_dense_rewards_and_errors(tmp_path):
    path = tmp_path / "coffee.hdf5"
    src = _write_robomimic(path, [5], [True])
    import_robomimic(path, tmp_path / "out", low_dim_keys=["robot0_eef_quat", "object"], progress=False)
    ep = open_task(tmp_path / "out" / "coffee").episode(0).arrays()
    want = np.concatenate([src[0]["obs"]["object"], src[0]["obs"]["robot0_eef_quat"]], axis=1)
    np.testing.assert_allclose(ep["states"], want.astype(np.float32))
    np.testing.assert_array_equal(ep["rewards"], src[0]["rewards"].astype(np.float32))
    with pytest.raises(DataError, match=r"coffee\.hdf5.*data/demo_0/obs/nope.*missing"):
        import_robomimic(path, tmp_path / "out3", low_dim_keys=["nope"], progress=False)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros((3, 7))
    with pytest.raises(DataError, match=r"coffee\.hdf5.*data/demo_0/actions.*num_samples"):
        import_robomimic(path, tmp_path / "out2", progress=False)
    (tmp_path / "bad.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"bad\.hdf5.*not a readable HDF5"):
        import_robomimic(tmp_path / "bad.hdf5", tmp_path / "out4", progress=False)


# --- CompoSuite ----------------------------------------------------------------------------------------------
def test_composuite_split_and_values(tmp_path):
    n = 23
    obs, act, rew = RNG.normal(size=(n, 11)), RNG.uniform(-2, 2, (n, 8)), RNG.normal(size=n)
    term, tout = np.zeros(n, bool), np.zeros(n, bool)
    term[4], tout[9], term[15], tout[19] = True, True, True, True  # steps 20..22 unfinished -> dropped
    folder = tmp_path / "src" / "IIWA_Box_None_PickPlace"
    folder.mkdir(parents=True)
    with h5py.File(folder / "data.hdf5", "w") as f:
        for k, v in dict(observations=obs, actions=act, rewards=rew, terminals=term, timeouts=tout).items():
            f[k] = v
    res = import_composuite(tmp_path / "src", tmp_path / "out", progress=False)
    assert res["IIWA_Box_None_PickPlace"]["written"] == 4
    td = open_task(tmp_path / "out" / "IIWA_Box_None_PickPlace")
    assert td.lengths.tolist() == [5, 5, 6, 4]
    for k, (s, e) in enumerate([(0, 5), (5, 10), (10, 16), (16, 20)]):
        ep = td.episode(td.stems.index(str(k))).arrays()
        np.testing.assert_allclose(ep["states"], obs[s:e].astype(np.float32))
        np.testing.assert_allclose(ep["actions"], np.clip(act[s:e], -1, 1).astype(np.float32))
        np.testing.assert_allclose(ep["rewards"], rew[s:e].astype(np.float32))
        np.testing.assert_array_equal(ep["dones"].astype(bool), term[s:e])
    assert import_composuite(tmp_path / "src", tmp_path / "out", progress=False)["IIWA_Box_None_PickPlace"]["skipped"] == 4
    with h5py.File(folder / "data.hdf5", "a") as f:
        del f["timeouts"]
    with pytest.raises(DataError, match=r"data\.hdf5.*'timeouts'.*missing"):
        import_composuite(tmp_path / "src", tmp_path / "out5", progress=False)


# --- DQN-Replay ----------------------------------------------------------------------------------------------
def _gz_npy(path, a):
    buf = io.BytesIO()
    np.save(buf, a)
    with gzip.open(path, "wb") as f:
        f.write(buf.getvalue())


def _write_dqn(logs, k, n):
    logs.mkdir(parents=True, exist_ok=True)
    obs = RNG.integers(0, 256, (n, 84, 84), dtype=np.uint8)
    act = RNG.integers(0, 6, n).astype(np.int32)
    rew = RNG.choice([-1.0, 0.0, 1.0], n).astype(np.float32)
    term = np.zeros(n, np.uint8)
    term[[3, 7, 12]] = 1
    for name, a in dict(observation=obs, action=act, reward=rew, terminal=term).items():
        _gz_npy(logs / f"$store$_{name}_ckpt.{k}.gz", a)
    return obs, act, rew, term


def test_dqn_replay_frames_actions_and_resume(tmp_path):
    cv2 = pytest.importorskip("cv2")
    logs = tmp_path / "src" / "Pong" / "1" / "replay_logs"
    obs, act, rew, term = _write_dqn(logs, 0, 15)
    res = import_dqn_replay(tmp_path / "src", tmp_path / "out", minimal_actions="0,1,3,4,11,12", progress=False)
    assert res["Pong"]["written"] == 3  # steps 13, 14 follow the last terminal -> dropped
    td = open_task(tmp_path / "out" / "Pong")
    assert td.stems == ["100000000", "100000001", "100000002"] and td.lengths.tolist() == [4, 4, 5]
    minimal = np.array([0, 1, 3, 4, 11, 12])
    for j, (s, e) in enumerate([(0, 4), (4, 8), (8, 13)]):
        ep = td.episode(j).arrays()
        assert ep["states"].shape == (e - s, 3, 64, 64) and ep["states"].dtype == np.uint8
        want = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in obs[s:e]])
        for c in range(3):
            np.testing.assert_array_equal(ep["states"][:, c], want)
        np.testing.assert_array_equal(ep["actions"], minimal[act[s:e]])
        np.testing.assert_array_equal(ep["rewards"], rew[s:e])
        assert ep["dones"].astype(bool).tolist() == [False] * (e - s - 1) + [True]
    # the same minimal set from ale-py's bundled Pong ROM, and resume skips everything
    pytest.importorskip("ale_py")
    from lram.data.importers.dqn_replay import minimal_action_set, rom_name

    assert minimal_action_set("Pong") == [0, 1, 3, 4, 11, 12]  # NOOP FIRE RIGHT LEFT RIGHTFIRE LEFTFIRE
    assert rom_name("SpaceInvaders") == "space_invaders" and rom_name("MsPacman") == "ms_pacman"
    again = import_dqn_replay(tmp_path / "src", tmp_path / "out", progress=False)
    assert again["Pong"]["written"] == 0 and again["Pong"]["skipped"] == 3


def test_dqn_replay_errors(tmp_path):
    logs = tmp_path / "Breakout" / "2" / "replay_logs"
    _write_dqn(logs, 3, 15)
    _gz_npy(logs / "$store$_action_ckpt.3.gz", np.full(15, 9, np.int32))
    with pytest.raises(DataError, match=r"action_ckpt\.3\.gz.*'action'.*\[0, 4\)"):
        import_dqn_replay(tmp_path, tmp_path / "out", minimal_actions=[0, 1, 3, 4], progress=False)
    (logs / "$store$_reward_ckpt.3.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"reward_ckpt\.3\.gz.*'reward'.*gzipped"):
        import_dqn_replay(tmp_path, tmp_path / "out", minimal_actions=[0, 1, 3, 4], progress=False)


# --- Minari --------------------------------------------------------------------------------------------------
def test_minari_dict_obs_discrete_actions(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    obs_space = gym.spaces.Dict({"pos": gym.spaces.Box(-5, 5, (2,), np.float32), "arm": gym.spaces.Box(-5, 5, (3,), np.float32)})
    bufs, src = [], []
    for i, t in enumerate([5, 3, 4]):
        o = {"pos": RNG.normal(size=(t + 1, 2)).astype(np.float32), "arm": RNG.normal(size=(t + 1, 3)).astype(np.float32)}
        a, r = RNG.integers(0, 4, t), RNG.normal(size=t)
        term = np.zeros(t, bool)
        term[-1] = i != 1
        trunc = ~term & (np.arange(t) == t - 1)
        bufs.append(EpisodeBuffer(id=i, observations=o, actions=a, rewards=r, terminations=term, truncations=trunc))
        src.append((o, a, r, term))
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers("lram/toy-v0", bufs, observation_space=obs_space,
                                           action_space=gym.spaces.Discrete(4), algorithm_name="random", author="lram",
                                           author_email="a@b.c", code_permalink="https://example.org")
    monkeypatch.delenv("MINARI_DATASETS_PATH")  # the importer finds the dataset from its folder alone
    res = import_minari(tmp_path / "minari" / "lram" / "toy-v0", tmp_path / "out", progress=False)
    assert res["lram/toy-v0"]["written"] == 3
    td = open_task(tmp_path / "out" / "lram" / "toy-v0")
    for i, (o, a, r, term) in enumerate(src):
        ep = td.episode(td.stems.index(str(i))).arrays()
        t = len(r)
        np.testing.assert_allclose(ep["states"], np.concatenate([o["arm"][:t], o["pos"][:t]], axis=1))
        assert ep["actions"].dtype == np.int64
        np.testing.assert_array_equal(ep["actions"], a)
        np.testing.assert_allclose(ep["rewards"], r.astype(np.float32))
        np.testing.assert_array_equal(ep["dones"].astype(bool), term)
    assert import_minari(tmp_path / "minari" / "lram" / "toy-v0", tmp_path / "out", progress=False)["lram/toy-v0"]["skipped"] == 3
    with pytest.raises(DataError, match="not a Minari dataset folder"):
        import_minari(tmp_path / "out", tmp_path / "out2", progress=False)


# --- CLI -----------------------------------------------------------------------------------------------------
def test_cli_import(tmp_path, capsys):
    path = tmp_path / "lift.hdf5"
    _write_robomimic(path, [4, 5], [True, True])
    rc = data_main(["import", "robomimic", str(path), str(tmp_path / "out"), "--layout", "packed", "--sparse-reward",
                    "--low-dim-keys", "object,robot0_eef_pos", "--no-progress"])
    assert rc == 0
    td = open_task(tmp_path / "out" / "lift")
    assert td.layout == "packed" and td.obs_shape == (8,) and td.returns.tolist() == [1.0, 1.0]
    assert "wrote 2 episodes" in capsys.readouterr().out
    (tmp_path / "bad.hdf5").write_bytes(b"x")
    assert data_main(["import", "composuite", str(tmp_path / "bad.hdf5"), str(tmp_path / "o2"), "--no-progress"]) == 1
    assert "bad.hdf5" in capsys.readouterr().err
