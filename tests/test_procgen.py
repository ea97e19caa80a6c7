"""Procgen env adapter and expert-data generator: observations vs raw gym3, episode boundaries, PPO files, resume."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest

procgen = pytest.importorskip("procgen")
pytest.importorskip("stable_baselines3")

from lram.data.episode import DataError  # noqa: E402
from lram.data.generators.procgen_gen import episode_seed, generate_procgen, record_chunk  # noqa: E402
from lram.envs import procgen_env as P  # noqa: E402


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("states", "actions", "rewards", "dones", "returns_to_go")}


def test_observations_match_raw_gym3_channels_first():
    kw = dict(num_levels=200, start_level=0, distribution_mode="easy")
    ours = P.ProcgenBatch("bigfish", 3, seed=11, **kw)
    raw = procgen.ProcgenGym3Env(num=3, env_name="bigfish", rand_seed=11, **kw)
    assert ours.action_space.n == 15 == raw.ac_space.eltype.n and ours.observation_space.shape == (3, 64, 64)
    obs = ours.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        _, r_ob, _ = raw.observe()
        assert obs.shape == (3, 3, 64, 64) and obs.dtype == np.uint8 and obs.flags.c_contiguous
        # channel c of ours is channel c of the raw HWC frame (RGB order kept, not just a transpose of shape)
        for c in range(3):
            np.testing.assert_array_equal(obs[:, c], r_ob["rgb"][..., c])
        a = rng.integers(0, 15, 3)
        raw.act(a.astype(np.int32))
        obs, rew, dones, _ = ours.step(a)
        np.testing.assert_array_equal(rew, raw.observe()[0])
    assert not np.array_equal(obs[:, 0], obs[:, 2])  # real colour frames, not a gray channel repeated
    # the gymnasium adapter sees the same frames as a batch of one with the same seed
    env, one = P.ProcgenEnv("coinrun", seed=0), P.ProcgenBatch("coinrun", 1, seed=4)
    o, info = env.reset(seed=4)
    np.testing.assert_array_equal(o, one.reset()[0])
    assert info["level_seed"] == one.level_seeds()[0]
    for _ in range(5):
        o, r, term, trunc, _ = env.step(7)
        np.testing.assert_array_equal(o, one.step(np.array([7]))[0][0])
    with pytest.raises(ValueError, match="actions"):
        one.step(np.array([15]))
    with pytest.raises(ValueError, match="unknown Procgen game"):
        P.ProcgenBatch("pong")


def test_episode_boundaries_match_the_raw_stream():
    seed, n = 5, 4
    eps, steps, _ = record_chunk(("bigfish", "random", None, False, 1, 0, list(range(n)), seed, {}))
    assert [i for i, _ in eps] == list(range(n)) and steps == sum(len(e) for _, e in eps)
    # replay the same action stream on a raw gym3 env and cut it at its `first` flags
    raw = procgen.ProcgenGym3Env(num=1, env_name="bigfish", rand_seed=seed, num_levels=200, start_level=0,
                                 distribution_mode="easy")
    rng = np.random.default_rng(seed)
    for _, ep in eps:
        T = len(ep)
        for t in range(T):
            _, ob, first = raw.observe()
            assert bool(first[0]) == (t == 0)
            np.testing.assert_array_equal(ep.states[t], ob["rgb"][0].transpose(2, 0, 1))
            a = rng.integers(0, 15, size=1, dtype=np.int64)
            assert ep.actions[t] == a[0]
            raw.act(a.astype(np.int32))
            assert ep.rewards[t] == raw.observe()[0][0]
        assert ep.dones.tolist() == [False] * (T - 1) + [True]
        assert ep.total_return == pytest.approx(float(ep.rewards.sum()))
    # the first frame after a done is the start of a new level: the same frame as a fresh env on that level
    b = P.ProcgenBatch("bigfish", 1, seed=5)
    b.reset()
    rng = np.random.default_rng(0)
    for _ in range(300):
        obs, _, done, infos = b.step(rng.integers(0, 15, 1))
        if done[0]:
            break
    assert done[0]
    fresh = P.ProcgenBatch("bigfish", 1, seed=99, num_levels=1, start_level=infos[0]["level_seed"]).reset()
    np.testing.assert_array_equal(obs[0], fresh[0])


def test_tiny_ppo_run_writes_checked_files(tmp_path, capsys):
    from lram.data.cli import main as data_main

    kw = dict(timesteps=256, train_envs=4, batch=2, chunk=4, workers=0, progress=False,
              ppo_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1})
    s = generate_procgen(tmp_path, "bigfish", 2, "ppo", **kw)["procgen-bigfish"]
    assert s["written"] == 2 and "train_seconds" in s
    d = tmp_path / "procgen-bigfish"
    assert (d / "expert_ppo.zip").is_file() and sorted(p.name for p in d.glob("*.hdf5")) == ["0.hdf5", "1.hdf5"]
    settings = json.loads((d / "generator.json").read_text())
    assert settings["distribution_mode"] == "easy" and settings["num_levels"] == 200 and settings["timesteps"] == 256
    lengths, returns = json.loads((d / "episode_lengths.json").read_text()), json.loads((d / "episode_returns.json").read_text())
    for stem in ("0", "1"):
        ep = _read(d / f"{stem}.hdf5")
        T = lengths[stem]
        assert ep["states"].dtype == np.uint8 and ep["states"].shape == (T, 3, 64, 64)
        assert ep["actions"].dtype == np.int64 and ep["actions"].shape == (T,)
        assert 0 <= ep["actions"].min() <= ep["actions"].max() < 15
        assert ep["rewards"].dtype == np.float32 and ep["dones"].tolist() == [0] * (T - 1) + [1]
        assert returns[stem] == pytest.approx(float(ep["rewards"].sum()))
        np.testing.assert_allclose(ep["returns_to_go"], np.cumsum(ep["rewards"][::-1])[::-1])
    capsys.readouterr()
    assert data_main(["check", str(tmp_path), "--no-progress"]) == 0
    assert "0 bad files" in capsys.readouterr().out
    # resuming with another budget is refused; the trained expert is reused otherwise
    with pytest.raises(DataError, match="timesteps"):
        generate_procgen(tmp_path, "bigfish", 3, "ppo", **{**kw, "timesteps": 512})
    mtime = (d / "expert_ppo.zip").stat().st_mtime_ns
    s = generate_procgen(tmp_path, "bigfish", 3, "ppo", **kw)["procgen-bigfish"]
    assert (s["existing"], s["written"]) == (2, 1) and "train_seconds" not in s
    assert (d / "expert_ppo.zip").stat().st_mtime_ns == mtime


def test_resume_after_partial_run_equals_a_full_run(tmp_path):
    kw = dict(batch=2, chunk=3, workers=0, progress=False)
    generate_procgen(tmp_path / "full", "bigfish", 5, "random", **kw)
    part = tmp_path / "part" / "procgen-bigfish"
    assert generate_procgen(tmp_path / "part", "bigfish", 2, "random", **kw)["procgen-bigfish"]["written"] == 2
    (part / ".2.hdf5.killed.tmp").write_bytes(b"half an episode")  # what a killed writer leaves
    s = generate_procgen(tmp_path / "part", "bigfish", 5, "random", **kw)["procgen-bigfish"]
    assert (s["existing"], s["written"]) == (2, 3)
    assert not list(part.glob(".*.tmp"))
    full = tmp_path / "full" / "procgen-bigfish"
    for i in range(5):
        a, b = _read(full / f"{i}.hdf5"), _read(part / f"{i}.hdf5")
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    infos = json.loads((part / "episode_infos.json").read_text())
    assert infos["4"]["seed"] == episode_seed(0, "procgen-bigfish", 3)  # chunk 3..5 is seeded by its first index
    with pytest.raises(DataError, match="chunk"):
        generate_procgen(tmp_path / "part", "bigfish", 6, "random", **{**kw, "chunk": 4})


def test_missing_procgen_and_bad_arguments(tmp_path, monkeypatch, capsys):
    from lram.data.cli import main as data_main

    with pytest.raises(SystemExit) as e:  # argparse's exit(2) with the message
        data_main(["generate", "procgen", str(tmp_path), "--games", "pong", "--algo", "random", "--quiet"])
    assert e.value.code == 2 and "unknown Procgen game" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "procgen", None)  # as if procgen2 were not installed
    with pytest.raises(ImportError, match="pip install --no-deps procgen2==0.10.7"):
        P.require_procgen()
    with pytest.raises(SystemExit) as e:
        data_main(["generate", "procgen", str(tmp_path), "--algo", "random", "--quiet"])
    assert e.value.code == 2 and "procgen2" in capsys.readouterr().err
