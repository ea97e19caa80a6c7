"""Meta-World env wrapper and scripted-expert generator: shapes, time limit, expert success, replay of the
stored files in the simulator, action noise, resume after a kill, clear errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lram.data.episode import DataError, returns_to_go
from lram.data.generators import metaworld as gen
from lram.data.storage import PaperWriter, open_task
from lram.envs.metaworld import (
    ML45_TEST_TASKS,
    ML45_TRAIN_TASKS,
    MT10_TASKS,
    MT50_TASKS,
    expert_action,
    expert_policy,
    make_metaworld_env,
    require_metaworld,
    resolve_tasks,
)


def writer_factory(task_dir):
    return PaperWriter(task_dir, fmt="hdf5", compress=False, progress=False)


def load_episode(path: Path) -> dict[str, np.ndarray]:
    """Read an episode file in the paper's format (HDF5 datasets or npz arrays named by field)."""
    if path.suffix == ".hdf5":
        with h5py.File(path, "r", locking=False) as f:  # lram's reader may hold it open unlocked
            return {k: f[k][()] for k in f.keys()}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def episode_files(task_dir: Path) -> dict[int, Path]:
    return {int(p.name.split(".")[0]): p for p in task_dir.iterdir() if p.name.split(".")[0].isdigit()}


# ---------------------------------------------------------------------------------------------------- env


def test_task_lists_match_metaworld():
    from metaworld.env_dict import ML45_V3, MT10_V3, MT50_V3
    from metaworld.policies import ENV_POLICY_MAP

    assert list(MT50_TASKS) == list(MT50_V3) and len(MT50_TASKS) == 50
    assert set(ML45_TRAIN_TASKS) == set(ML45_V3["train"]) and len(ML45_TRAIN_TASKS) == 45
    assert set(ML45_TEST_TASKS) == set(ML45_V3["test"])
    assert set(ML45_TEST_TASKS) == {"bin-picking-v3", "box-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3"}
    assert set(ENV_POLICY_MAP) == set(MT50_TASKS)
    assert resolve_tasks("ml45-test") == list(ML45_TEST_TASKS)
    assert resolve_tasks("mt10") == list(MT10_V3) == list(MT10_TASKS)
    assert resolve_tasks("reach-v3, push-v3,reach-v3") == ["reach-v3", "push-v3"]
    assert len(resolve_tasks("ml45-train,ml45-test")) == 50


@pytest.mark.filterwarnings("ignore:.*infinity:UserWarning")  # metaworld's observation bounds are infinite
def test_env_shapes_goal_and_200_step_truncation():
    env = make_metaworld_env("reach-v3", seed=0)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    obs, info = env.reset(seed=7)
    assert obs.shape == (39,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs[-3:], env.goal, atol=1e-6)  # goal visible (ML envs zero it)
    assert np.abs(obs[-3:]).sum() > 0.1 and info["seed"] == 7
    truncated_at = []
    for t in range(1, 201):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.dtype == np.float32 and isinstance(r, float) and isinstance(info["success"], bool)
        assert not terminated
        if truncated:
            truncated_at.append(t)
    assert truncated_at == [200]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, np.float32))
    env.reset(seed=1)
    with pytest.raises(ValueError, match=r"expected shape \[4\]"):
        env.step(np.zeros(3))
    # same seed -> same goal and start, other seeds -> new goals; seedless resets draw fresh, reported seeds
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=8)
    c, info_c = env.reset()
    d, _ = env.reset(seed=info_c["seed"])
    np.testing.assert_array_equal(a, make_metaworld_env("reach-v3").reset(seed=7)[0])
    assert np.abs(a[-3:] - b[-3:]).max() > 1e-3 and np.abs(b[-3:] - c[-3:]).max() > 1e-3
    np.testing.assert_array_equal(c, d)
    check_env(make_metaworld_env("pick-place-v3", seed=0), skip_render_check=True)  # gymnasium's API checks
    short = make_metaworld_env("push-v3", max_steps=5)
    short.reset(seed=0)
    assert [short.step(np.zeros(4))[3] for _ in range(5)] == [False] * 4 + [True]


def test_expert_reaches_success_on_easy_tasks():
    for task in ("reach-v3", "button-press-v3"):
        env, policy = make_metaworld_env(task), expert_policy(task)
        for i in range(3):
            ep = gen.rollout_expert(env, policy, gen.episode_seed(0, task, i))
            assert len(ep) == 200 and ep.info["success"], (task, i, ep.info)
            assert 0 <= ep.info["first_success_step"] < 200
            assert not ep.dones.any()


def test_unknown_task_names_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown Meta-World task 'reach-v2'.*'reach-v3'.*Valid task names: assembly-v3"):
        make_metaworld_env("reach-v2")
    sets = r"mt50, mt10, ml45-train, ml45-test"
    with pytest.raises(ValueError, match=r"unknown Meta-World task 'pick-plaice'.*window-close-v3.*" + sets):
        gen.generate_metaworld(tmp_path, "reach-v3,pick-plaice", 1, writer_factory=writer_factory)
    assert not any(tmp_path.iterdir())  # nothing written before the names were checked
    with pytest.raises(SystemExit) as e:
        gen.main([str(tmp_path), "--tasks", "nope-v3", "--episodes", "1", "--quiet"])
    assert e.value.code == 2


def test_missing_metaworld_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'lram\[metaworld\]'"):
        require_metaworld()
    with pytest.raises(ImportError, match=r"pip install 'lram\[metaworld\]'"):
        make_metaworld_env("reach-v3")
    with pytest.raises(SystemExit) as e:  # the CLI prints the hint, no traceback
        gen.main([str(tmp_path), "--tasks", "reach-v3", "--episodes", "1", "--quiet"])
    assert e.value.code == 2 and "pip install 'lram[metaworld]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- generator


def test_generated_files_replay_in_the_simulator(tmp_path):
    tasks = ["reach-v3", "drawer-close-v3"]
    summary = gen.generate_metaworld(
        tmp_path, tasks, 3, action_noise=0.1, seed=5, workers=2, writer_factory=writer_factory, progress=False
    )
    for task in tasks:
        assert summary[task]["written"] == 3 and summary[task]["existing"] == 0
        task_dir = tmp_path / task
        settings = json.loads((task_dir / gen.SETTINGS_FILE).read_text())
        assert settings["seed"] == 5 and settings["action_noise"] == 0.1 and settings["max_steps"] == 200
        files = episode_files(task_dir)
        assert sorted(files) == [0, 1, 2]
        # lram's reader sees the same episodes, with per-episode success and seed in their infos
        td = open_task(task_dir, progress=False)
        assert td.stems == ["0", "1", "2"] and td.num_transitions == 600 and td.action_dim == 4
        infos = [td.info(i) for i in range(3)]
        assert summary[task]["successes"] == sum(info["success"] for info in infos)
        env = make_metaworld_env(task)
        for index, path in files.items():
            ep, info = load_episode(path), infos[index]
            assert info["seed"] == gen.episode_seed(5, task, index) and info["task"] == task
            assert isinstance(info["success"], bool) and info["action_noise"] == 0.1
            np.testing.assert_array_equal(td.read(index)["states"], ep["states"])
            assert ep["states"].shape == (200, 39) and ep["states"].dtype == np.float32
            assert ep["actions"].shape == (200, 4) and ep["actions"].dtype == np.float32
            assert ep["rewards"].shape == (200,) and ep["rewards"].dtype == np.float32
            assert ep["dones"].shape == (200,) and not ep["dones"].astype(bool).any()  # truncation only
            np.testing.assert_allclose(ep["returns_to_go"], returns_to_go(ep["rewards"]), rtol=1e-6)
            assert np.abs(ep["actions"]).max() <= 1.0
            # replay: the stored seed's reset and the stored actions reproduce the stored states and rewards
            obs, _ = env.reset(seed=info["seed"])
            states, rewards = [], []
            for a in ep["actions"]:
                states.append(obs)
                obs, r, *_ = env.step(a)
                rewards.append(r)
            np.testing.assert_array_equal(np.stack(states), ep["states"])
            np.testing.assert_array_equal(np.asarray(rewards, np.float32), ep["rewards"])
    # the three goals of a task differ (a fresh goal per episode)
    goals = [load_episode(p)["states"][0, -3:] for p in episode_files(tmp_path / "reach-v3").values()]
    assert min(np.abs(goals[i] - goals[j]).max() for i in range(3) for j in range(i)) > 1e-3


def test_action_noise_changes_actions_within_bounds():
    task, seed = "button-press-v3", gen.episode_seed(0, "button-press-v3", 0)
    env, policy = make_metaworld_env(task), expert_policy(task)
    clean = gen.rollout_expert(env, policy, seed, action_noise=0.0)
    noisy = gen.rollout_expert(env, policy, seed, action_noise=0.5)
    again = gen.rollout_expert(env, policy, seed, action_noise=0.5)
    # noiseless data are exactly the (clipped) expert's actions on the stored states
    expert_clean = np.stack([expert_action(policy, s) for s in clean.states])
    np.testing.assert_array_equal(clean.actions, expert_clean)
    np.testing.assert_array_equal(clean.states[0], noisy.states[0])  # same goal / start
    for ep in (clean, noisy):
        assert ep.actions.dtype == np.float32 and np.abs(ep.actions).max() <= 1.0
    expert_noisy = np.stack([expert_action(policy, s) for s in noisy.states])
    diff = noisy.actions - expert_noisy
    assert np.abs(diff).mean() > 0.2  # std 0.5 noise (partly clipped)
    assert (np.abs(noisy.actions) == 1.0).mean() > 0.05  # clipping happened and stayed at the bound
    np.testing.assert_array_equal(noisy.actions, again.actions)  # noise is seeded by the episode seed
    assert noisy.info["action_noise"] == 0.5 and noisy.info["seed"] == seed


def test_resume_after_interruption_completes_without_duplicates(tmp_path):
    class Killed(Exception):
        pass

    def dying_factory(limit):
        count = {"n": 0}

        def factory(task_dir):
            writer = writer_factory(task_dir)
            write = writer.write

            def write_then_die(ep, stem=None):
                if count["n"] == limit:
                    raise Killed
                count["n"] += 1
                write(ep, stem=stem)

            writer.write = write_then_die
            return writer

        return factory

    tasks = "reach-v3,window-close-v3"
    with pytest.raises(Killed):
        gen.generate_metaworld(tmp_path, tasks, 4, seed=1, workers=2, writer_factory=dying_factory(5), progress=False)
    assert len(episode_files(tmp_path / "reach-v3")) == 4 and len(episode_files(tmp_path / "window-close-v3")) == 1
    before = {p: p.read_bytes() for p in episode_files(tmp_path / "reach-v3").values()}
    summary = gen.generate_metaworld(tmp_path, tasks, 4, seed=1, workers=2, writer_factory=writer_factory, progress=False)
    assert summary["reach-v3"] == {**summary["reach-v3"], "existing": 4, "written": 0}
    assert summary["window-close-v3"]["existing"] == 1 and summary["window-close-v3"]["written"] == 3
    assert all(p.read_bytes() == b for p, b in before.items())  # finished episodes untouched
    # exactly the requested episodes, each once, identical to an uninterrupted run
    fresh = tmp_path / "fresh"
    gen.generate_metaworld(fresh, "window-close-v3", 4, seed=1, workers=0, writer_factory=writer_factory, progress=False)
    resumed = episode_files(tmp_path / "window-close-v3")
    assert sorted(resumed) == [0, 1, 2, 3]
    for i, path in episode_files(fresh / "window-close-v3").items():
        a, b = load_episode(path), load_episode(resumed[i])
        for field in ("states", "actions", "rewards"):
            np.testing.assert_array_equal(a[field], b[field])
    # a different setting in the same folder is refused, naming the file and the field
    with pytest.raises(DataError, match=r"generator.json: field 'action_noise'.*0.0.*0.2"):
        gen.generate_metaworld(tmp_path, tasks, 4, action_noise=0.2, seed=1, writer_factory=writer_factory)


def test_cli_killed_process_resumes(tmp_path):
    """SIGKILL the CLI mid-run: every file left is a complete episode, and the re-run completes the set."""
    out, n = tmp_path / "out", 30
    args = [str(out), "--tasks", "reach-v3", "--episodes", str(n), "--workers", "1", "--quiet"]
    code = f"from lram.data.generators.metaworld import main; raise SystemExit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(gen.existing_episodes(out / "reach-v3")) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    left = episode_files(out / "reach-v3")
    assert 2 <= len(left) < n
    for path in left.values():
        assert load_episode(path)["states"].shape == (200, 39)
    assert gen.main(args) == 0
    done = episode_files(out / "reach-v3")
    assert sorted(done) == list(range(n))
    assert open_task(out / "reach-v3", progress=False).stems == [str(i) for i in range(n)]  # the index agrees
    for i in (0, n - 1):
        ep = load_episode(done[i])
        assert ep["states"].shape == (200, 39) and np.abs(ep["actions"]).max() <= 1.0
