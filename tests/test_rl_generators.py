"""Atari and DMControl expert data generators: preprocessing, unified DMC layout, scripted / SB3 experts, resume."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("dm_control")
pytest.importorskip("stable_baselines3")

from lram.data.episode import DataError  # noqa: E402
from lram.data.generators.atari import generate_atari, record_episode  # noqa: E402
from lram.data.generators.dmcontrol import generate_dmcontrol  # noqa: E402
from lram.envs import atari as A  # noqa: E402
from lram.envs import dmcontrol as D  # noqa: E402


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("states", "actions", "rewards", "dones", "returns_to_go")}


# ----------------------------------------------------------------------------------------------- Atari


def test_atari_preprocessing_shapes_and_names():
    assert A.env_id("freeway") == "ALE/Freeway-v5" and A.env_id("ms_pacman") == "ALE/MsPacman-v5"
    assert A.task_name("SpaceInvaders") == "atari-spaceinvaders"
    env = A.make_atari_env("freeway", max_episode_steps=20)
    try:
        assert env.action_space.n == 18
        assert env.unwrapped._frameskip == 1  # frame skipping is done by AtariPreprocessing (4, max-pooled)
        obs, _ = env.reset(seed=3)
        assert obs.shape == (3, 64, 64) and obs.dtype == np.uint8
        assert (obs[0] == obs[1]).all() and (obs[0] == obs[2]).all() and obs.std() > 0
        n, trunc = 0, False
        while not trunc:
            obs, _, term, trunc, _ = env.step(A.UP)
            n += 1
            assert not term
        assert n == 20 and obs.shape == (3, 64, 64)
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown Atari game"):
        A.make_atari_env("notagame")


def test_freeway_expert_beats_random():
    env = A.make_atari_env("freeway", max_episode_steps=400)
    rng = np.random.default_rng(0)
    try:
        expert = record_episode(env, A.FreewayExpert(env), seed=1, max_steps=400, discrete=True)
        up = record_episode(env, A.FreewayExpert(env, mode="up"), seed=1, max_steps=400, discrete=True)
        rand = record_episode(env, lambda o: int(rng.integers(18)), seed=1, max_steps=400, discrete=True)
    finally:
        env.close()
    # measured: avoid 5, always-up 4, random 0 in 400 steps (full games: ~30 / 22 / 0)
    assert expert.total_return >= 4 and rand.total_return <= 1
    assert expert.total_return >= up.total_return
    assert len(expert) == 400 and not expert.dones.any()  # truncated, not terminated
    assert set(np.unique(expert.actions)) <= {A.UP, A.NOOP}


def test_atari_ppo_files_and_resume(tmp_path):
    kw = dict(timesteps=128, max_steps=40, workers=0, progress=False, ppo_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1})
    s = generate_atari(tmp_path, "freeway", 2, "ppo", **kw)["atari-freeway"]
    assert s["written"] == 2
    d = tmp_path / "atari-freeway"
    model = d / "expert_ppo.zip"
    assert model.is_file()
    files = sorted(p.name for p in d.glob("*.hdf5"))
    assert files == ["000000000.hdf5", "000000001.hdf5"]
    ep = _read(d / files[0])
    assert ep["states"].dtype == np.uint8 and ep["states"].shape == (40, 3, 64, 64)
    assert ep["actions"].dtype == np.int64 and ep["actions"].shape == (40,)
    assert 0 <= ep["actions"].min() <= ep["actions"].max() < 18
    assert ep["rewards"].dtype == np.float32 and ep["dones"].dtype.kind in "bu" and not ep["dones"].any()  # stored as uint8
    np.testing.assert_allclose(ep["returns_to_go"], np.cumsum(ep["rewards"][::-1])[::-1])
    lengths = json.loads((d / "episode_lengths.json").read_text())
    assert lengths == {"000000000": 40, "000000001": 40}
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    s = generate_atari(tmp_path, "freeway", 3, "ppo", **kw)["atari-freeway"]
    assert (s["existing"], s["written"]) == (2, 1) and "train_seconds" not in s  # the saved expert is reused
    assert model.stat().st_mtime_ns == before["expert_ppo.zip"]
    assert (d / "000000000.hdf5").stat().st_mtime_ns == before["000000000.hdf5"]
    assert len(json.loads((d / "episode_lengths.json").read_text())) == 3
    with pytest.raises(DataError, match="timesteps"):
        generate_atari(tmp_path, "freeway", 3, "ppo", **{**kw, "timesteps": 256})


def test_atari_random_is_reproducible_and_cli(tmp_path):
    from lram.data.cli import main as data_main

    for sub in ("a", "b"):
        assert data_main(["generate", "atari", str(tmp_path / sub), "--algo", "random", "--episodes", "1", "--max-steps", "30",
                          "--workers", "0", "--quiet"]) == 0
    a, b = (_read(tmp_path / sub / "atari-freeway" / "000000000.hdf5") for sub in ("a", "b"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="only Freeway"):
        generate_atari(tmp_path / "c", "pong", 1, "scripted", progress=False)


# ----------------------------------------------------------------------------------------------- DMControl


def test_dmc_layout_fits_all_tasks_and_matches_suite():
    assert sum(D.OBS_KEY_DIMS.values()) == D.OBS_DIM == 204
    # slots are disjoint and cover 0..203
    cover = np.zeros(204, dtype=int)
    for k, n in D.OBS_KEY_DIMS.items():
        cover[D.OBS_KEY_START[k]:D.OBS_KEY_START[k] + n] += 1
    assert (cover == 1).all()
    assert D.OBS_KEY_START["velocity"] == 14 and D.OBS_KEY_START["body_velocities"] == 158 and D.OBS_KEY_START["height"] == 203
    assert D.derive_layout() == D.OBS_KEY_DIMS and list(D.derive_layout()) == list(D.OBS_KEY_DIMS)
    assert len(D.TASK_SETS["dmc16"]) == 16
    for task in D.TASK_SETS["dmc16"]:
        env = D.DMControlEnv(task)
        try:
            obs, _ = env.reset(seed=0)
            raw = env._env.reset().observation
            assert obs.shape == (204,) and obs.dtype == np.float32
            assert env.action_space.shape[0] <= 6
            for k, v in raw.items():
                flat = np.asarray(v, dtype=np.float32).ravel()
                assert flat.size <= D.OBS_KEY_DIMS[k], (task, k)
            u = D.unified_obs(raw)
            used = np.zeros(204, bool)
            for k, v in raw.items():
                s, n = D.OBS_KEY_START[k], np.asarray(v).size
                np.testing.assert_array_equal(u[s:s + n], np.asarray(v, dtype=np.float32).ravel())
                used[s:s + n] = True
            assert (u[~used] == 0).all()
        finally:
            env.close()
    with pytest.raises(ValueError, match="no slot"):
        D.unified_obs({"bogus": np.zeros(2)})
    with pytest.raises(ValueError, match="slot holds"):
        D.unified_obs({"height": np.zeros(2)})


def test_dmc_sac_files_and_resume(tmp_path):
    kw = dict(timesteps=200, workers=0, progress=False, sac_kwargs={"learning_starts": 100, "batch_size": 32})
    s = generate_dmcontrol(tmp_path, "cartpole-swingup", 1, "sac", **kw)["cartpole-swingup"]
    assert s["written"] == 1 and "train_seconds" in s
    d = tmp_path / "cartpole-swingup"
    ep = _read(d / "0.hdf5")
    assert ep["states"].shape == (1000, 204) and ep["states"].dtype == np.float32
    s_pos, s_vel = D.OBS_KEY_START["position"], D.OBS_KEY_START["velocity"]
    used = np.zeros(204, bool)
    used[s_pos:s_pos + 3] = used[s_vel:s_vel + 2] = True
    assert (ep["states"][:, ~used] == 0).all() and np.abs(ep["states"][:, used]).sum() > 0
    assert ep["actions"].shape == (1000, 1) and ep["actions"].dtype == np.float32 and np.abs(ep["actions"]).max() <= 1
    assert not ep["dones"].any() and ep["rewards"].dtype == np.float32 and 0 <= ep["rewards"].min()
    mtime = (d / "expert_sac.zip").stat().st_mtime_ns
    s = generate_dmcontrol(tmp_path, "cartpole-swingup", 2, "sac", **kw)["cartpole-swingup"]
    assert (s["existing"], s["written"]) == (1, 1) and "train_seconds" not in s
    assert (d / "expert_sac.zip").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="algo"):
        generate_dmcontrol(tmp_path, "cartpole-swingup", 2, "random", progress=False)


def test_dmc_env_seeding_and_errors():
    env = D.DMControlEnv("walker-walk", max_steps=5)
    try:
        a, _ = env.reset(seed=7)
        b, _ = env.reset(seed=7)
        c, _ = env.reset(seed=8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        for t in range(5):
            _, r, term, trunc, _ = env.step(np.zeros(6))
            assert not term and trunc == (t == 4)
    finally:
        env.close()
    with pytest.raises(ValueError, match="domain"):
        D.split_task("walker")
    with pytest.raises(ValueError, match="unknown dm_control task"):
        D.DMControlEnv("walker-fly")
