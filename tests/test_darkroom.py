"""Dark-Room environment (single and batched) and the learning-history generator."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lram.data.episode import DataError, returns_to_go
from lram.data.generators.darkroom import (
    SETTINGS_FILE,
    LearnerConfig,
    generate_learning_histories,
    learning_histories,
    main,
    task_name,
)
from lram.data.storage import PaperWriter, open_task
from lram.envs.darkroom import (
    ENV_ID,
    MOVES,
    DarkRoom,
    DarkRoomBatch,
    goal_split,
    optimal_return,
    random_policy_return,
    train_test_goals,
)

# The 80 training goals of LRAM's configs/agent_params/data_paths/dark_room_10x10.yaml ("[0,0]_[gx,gy].pkl"), in order.
LRAM_TRAIN_GOALS = [
    (2, 0), (0, 2), (1, 5), (2, 2), (5, 7), (9, 1), (6, 9), (5, 5), (1, 1), (7, 9), (0, 9), (3, 8), (8, 5), (0, 0),
    (8, 9), (1, 3), (0, 5), (0, 1), (9, 5), (8, 3), (4, 4), (1, 2), (7, 8), (9, 4), (3, 7), (9, 2), (9, 7), (5, 6),
    (6, 3), (4, 6), (0, 8), (3, 3), (4, 5), (1, 9), (1, 4), (9, 3), (7, 3), (3, 9), (2, 4), (0, 6), (6, 2), (2, 3),
    (1, 8), (4, 2), (8, 0), (8, 6), (3, 1), (6, 7), (2, 7), (1, 0), (4, 0), (7, 0), (9, 6), (8, 8), (2, 6), (5, 4),
    (7, 1), (2, 9), (2, 5), (4, 3), (4, 1), (7, 2), (0, 3), (8, 1), (5, 3), (7, 7), (6, 1), (0, 7), (2, 8), (9, 9),
    (5, 2), (4, 8), (8, 2), (6, 0), (7, 4), (3, 2), (4, 7), (7, 6), (3, 6), (0, 4),
]
UP, RIGHT, DOWN, LEFT, NOOP = range(5)


# ----------------------------------------------------------------------------------------------- environment


def test_moves_walls_and_observation():
    env = DarkRoom(goal=(9, 9))
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (2,) and obs.tolist() == [0.0, 0.0] and info["goal"] == (9, 9)
    assert env.observation_space.contains(obs) and env.action_space.n == 5
    for a in (UP, LEFT, NOOP):  # the top-left corner: up and left hit walls
        assert env.step(a)[0].tolist() == [0.0, 0.0]
    assert env.step(RIGHT)[0].tolist() == [1.0, 0.0]
    assert env.step(DOWN)[0].tolist() == [1.0, 1.0]  # y grows downwards
    assert env.step(UP)[0].tolist() == [1.0, 0.0]
    assert env.step(LEFT)[0].tolist() == [0.0, 0.0]
    for _ in range(12):
        obs, *_ = env.step(RIGHT)
    assert obs.tolist() == [9.0, 0.0]  # the right wall stops the agent
    for _ in range(12):
        obs, *_ = env.step(DOWN)
    assert obs.tolist() == [9.0, 9.0]


@pytest.mark.parametrize("variant", ["dense", "sparse"])
def test_goal_reward_and_episode_length(variant):
    env = DarkRoom(goal=(2, 0), variant=variant)
    env.reset(seed=0)
    _, r, term, trunc, _ = env.step(RIGHT)
    assert (r, term, trunc) == (0.0, False, False)
    _, r, term, trunc, _ = env.step(RIGHT)  # reaches the goal at step 2
    assert r == 1.0 and not trunc
    if variant == "sparse":
        assert term
        with pytest.raises(RuntimeError, match="reset"):
            env.step(NOOP)
        return
    assert not term
    total, steps = 1.0, 2
    while True:  # dense: +1 on every step spent on the goal, never terminates, truncated at 100 steps
        _, r, term, trunc, _ = env.step(NOOP)
        total, steps = total + r, steps + 1
        assert not term
        if trunc:
            break
    assert steps == 100 and total == 99.0 == optimal_return((2, 0))
    # leaving the goal stops the reward; coming back restarts it
    env.reset()
    rewards = [env.step(a)[1] for a in (RIGHT, RIGHT, RIGHT, LEFT, NOOP)]
    assert rewards == [0.0, 1.0, 0.0, 1.0, 1.0]


def test_goal_at_start_and_random_goals():
    env = DarkRoom(goal=(0, 0), variant="sparse")
    env.reset(seed=1)
    assert env.step(LEFT)[1:3] == (1.0, True)  # bumping into the wall ends on the goal
    env = DarkRoom()  # goal=None: a fresh goal per reset, from the seeded RNG
    goals_a = [env.reset(seed=5)[1]["goal"]] + [env.reset()[1]["goal"] for _ in range(20)]
    goals_b = [env.reset(seed=5)[1]["goal"]] + [env.reset()[1]["goal"] for _ in range(20)]
    assert goals_a == goals_b and len(set(goals_a)) > 5
    env.reset(options={"goal": (4, 6)})
    assert env.goal == (4, 6) and env.reset()[1]["goal"] == (4, 6)


def test_gymnasium_checker_registration_and_bad_input():
    check_env(DarkRoom(goal=(3, 4)), skip_render_check=True)
    env = gym.make(ENV_ID, goal=(3, 4), variant="sparse")
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0] and env.unwrapped.variant == "sparse"
    env.close()
    with pytest.raises(ValueError, match="goal"):
        DarkRoom(goal=(10, 0))
    with pytest.raises(ValueError, match="variant"):
        DarkRoom(variant="hard")
    env = DarkRoom(goal=(1, 1))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(5)
    with pytest.raises(ValueError, match="actions"):
        DarkRoomBatch([(1, 1)]).step(np.array([0.5]))
    assert DarkRoom(goal=(1, 0), render_mode="ansi").render() is not None


@pytest.mark.parametrize("variant", ["dense", "sparse"])
def test_batch_matches_single_env(variant):
    rng = np.random.default_rng(0)
    goals = [(0, 0), (1, 0), (0, 1), (3, 2), (9, 9)] + [tuple(rng.integers(0, 10, 2)) for _ in range(11)]
    batch = DarkRoomBatch(goals, variant=variant, max_steps=40)
    singles = [DarkRoom(goal=g, variant=variant, max_steps=40) for g in goals]
    for episode in range(3):
        obs_b = batch.reset()
        for i, env in enumerate(singles):
            np.testing.assert_array_equal(env.reset(seed=episode)[0], obs_b[i])
        live = np.ones(len(goals), dtype=bool)
        # biased toward right/down so that the far goals get reached too
        actions = rng.choice(5, size=(40, len(goals)), p=[0.1, 0.35, 0.35, 0.1, 0.1])
        for t in range(40):
            obs_b, r_b, term_b, trunc_b = batch.step(actions[t])
            for i, env in enumerate(singles):
                if not live[i]:  # finished rooms are frozen until reset
                    assert (r_b[i], term_b[i], trunc_b[i]) == (0.0, False, False)
                    continue
                obs, r, term, trunc, _ = env.step(int(actions[t, i]))
                np.testing.assert_array_equal(obs, obs_b[i])
                assert (r, term, trunc) == (r_b[i], term_b[i], trunc_b[i]), (variant, goals[i], t)
                live[i] = not (term or trunc)
            np.testing.assert_array_equal(batch.done, ~live)
        assert batch.done.all()


def _dp_optimal_return(goal, max_steps, variant, size=10):
    """Best return by dynamic programming over (time, cell): the reference for optimal_return."""
    value = np.zeros((size, size))  # value[y, x] with 0 steps left
    ys, xs = np.mgrid[0:size, 0:size]
    for _ in range(max_steps):
        best = np.full((size, size), -np.inf)
        for dx, dy in MOVES:
            nx, ny = np.clip(xs + dx, 0, size - 1), np.clip(ys + dy, 0, size - 1)
            on_goal = (nx == goal[0]) & (ny == goal[1])
            future = np.where(on_goal & (variant == "sparse"), 0.0, value[ny, nx])  # sparse: ends there
            best = np.maximum(best, on_goal + future)
        value = best
    return value[0, 0]


@pytest.mark.parametrize("variant", ["dense", "sparse"])
@pytest.mark.parametrize("max_steps", [100, 12])
def test_optimal_return_formula_matches_dynamic_programming(variant, max_steps):
    for goal in goal_split("all"):
        assert optimal_return(goal, max_steps=max_steps, variant=variant) == _dp_optimal_return(goal, max_steps, variant), goal
    assert optimal_return((9, 9)) == 83.0 and optimal_return((0, 0)) == 100.0 and optimal_return((1, 0)) == 100.0


@pytest.mark.parametrize("variant", ["dense", "sparse"])
def test_random_policy_return_matches_monte_carlo(variant):
    rng = np.random.default_rng(1)
    n = 20000
    for goal in [(0, 0), (2, 1), (6, 5)]:
        env = DarkRoomBatch([goal] * n, variant=variant)
        env.reset()
        total = np.zeros(n)
        for _ in range(100):
            total += env.step(rng.integers(0, 5, n))[1]
        exact = random_policy_return(goal, variant=variant)
        assert abs(total.mean() - exact) < 4 * total.std() / np.sqrt(n) + 1e-9, (goal, total.mean(), exact)


def test_train_test_split_is_fixed_disjoint_and_lrams():
    train, test = train_test_goals()
    assert (train, test) == train_test_goals()
    assert len(train) == 80 and len(test) == 20 and not set(train) & set(test)
    assert set(train) | set(test) == {(x, y) for x in range(10) for y in range(10)}
    assert train == LRAM_TRAIN_GOALS
    assert goal_split("all") == train + test and goal_split("test") == test
    with pytest.raises(ValueError, match="goals"):
        goal_split("heldout")


# ----------------------------------------------------------------------------------------------- histories

GOALS = [(2, 0), (5, 7), (9, 1), (6, 9)]


def _read_all(task_dir):
    td = open_task(task_dir, progress=False)
    return td, [td.episode(i) for i in range(td.num_episodes)]


def test_histories_improve_from_random_to_optimal(tmp_path):
    summary = generate_learning_histories(tmp_path, GOALS, 60, seed=0, workers=1, progress=False)
    assert list(summary) == [task_name(g) for g in GOALS]
    for goal in GOALS:
        td, episodes = _read_all(tmp_path / task_name(goal))
        assert td.stems == [str(k) for k in range(60)]
        returns = np.array([ep.total_return for ep in episodes])
        first, last = returns[:10].mean(), returns[-10:].mean()
        opt, rnd = optimal_return(goal), random_policy_return(goal)
        assert first < rnd + 10, (goal, first, rnd)  # (near) random at the start
        assert last > first + 50 and last >= 0.95 * opt, (goal, first, last, opt)
        assert summary[task_name(goal)]["last_return"] == pytest.approx(returns[-6:].mean())  # the stats' 10% window
        env = DarkRoom(goal=goal)
        for k, ep in enumerate(episodes):
            assert ep.info == {"goal": list(goal), "episode_index": k}
            assert ep.states.dtype == np.float32 and ep.states.shape == (100, 2) and ep.actions.dtype == np.int64
            assert ep.dones.tolist() == [False] * 99 + [True]
            np.testing.assert_allclose(ep.returns_to_go, returns_to_go(ep.rewards))
            obs, _ = env.reset()  # the stored actions replayed in the single env reproduce states and rewards
            for t in range(100):
                np.testing.assert_array_equal(obs, ep.states[t])
                obs, r, *_ = env.step(int(ep.actions[t]))
                assert r == ep.rewards[t]
        settings = json.loads((tmp_path / task_name(goal) / SETTINGS_FILE).read_text())
        assert settings["complete"] and settings["goal"] == list(goal) and settings["stats"]["optimal_return"] == opt


def test_sparse_histories_terminate_at_the_goal():
    goal = (3, 2)
    lengths, returns = [], []
    for _, (ep,) in learning_histories([goal], 60, variant="sparse", seed=3):
        assert ep.dones[-1] and not ep.dones[:-1].any()
        assert len(ep) == 100 or ep.rewards[-1] == 1.0  # an episode ends early only on the goal
        lengths.append(len(ep))
        returns.append(ep.total_return)
    assert np.mean(returns[-10:]) == 1.0 and np.mean(lengths[-10:]) == 5  # the shortest path
    assert np.mean(lengths[:10]) > 30


def test_deterministic_and_independent_of_batch():
    def run(goals, seed, algo="ucb_q"):
        out = {g: [] for g in goals}
        for _, eps in learning_histories(goals, 30, algo=algo, seed=seed):
            for g, ep in zip(goals, eps):
                out[g].append(ep)
        return out

    a = run([(5, 7), (0, 0), (9, 9)], seed=7)
    b = run([(5, 7)], seed=7)
    c = run([(5, 7)], seed=8)
    for ea, eb in zip(a[(5, 7)], b[(5, 7)]):
        for f in ("states", "actions", "rewards", "dones"):
            np.testing.assert_array_equal(getattr(ea, f), getattr(eb, f))
    assert any(not np.array_equal(ea.actions, ec.actions) for ea, ec in zip(a[(5, 7)], c[(5, 7)]))
    q = run([(5, 7)], seed=7, algo="q")
    assert any(not np.array_equal(ea.actions, eq.actions) for ea, eq in zip(a[(5, 7)], q[(5, 7)]))


class _Killed(Exception):
    pass


class _DyingWriter:
    """A PaperWriter that dies (like a killed process) after ``budget`` episodes, mid-way through a file."""

    budget = 0

    def __init__(self, task_dir):
        self.w = PaperWriter(task_dir, fmt="npz", compress=False)

    def __contains__(self, stem):
        return stem in self.w

    def write(self, episode, stem=None):
        if _DyingWriter.budget == 0:
            (self.w.dir / f".{stem}.npz.dead.tmp").write_bytes(b"PK\x03\x04half")  # a temp file left behind
            raise _Killed()
        _DyingWriter.budget -= 1
        return self.w.write(episode, stem)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.w.close()
        else:  # a killed process commits nothing more: drop the lock without writing the index
            self.w._lock.release()


def _files(task_dir):
    return sorted(p.name for p in task_dir.iterdir())


def test_resume_completes_partial_goals_and_skips_finished(tmp_path):
    goals, n = [(2, 0), (5, 7), (9, 1)], 40
    ref = tmp_path / "ref"
    generate_learning_histories(ref, goals, n, seed=2, workers=2, progress=False)  # also covers the worker pool

    out = tmp_path / "out"
    generate_learning_histories(out, goals[:1], n, seed=2, progress=False)  # goal 1 finished before the crash
    done_files = {p.name: p.stat().st_mtime_ns for p in (out / task_name(goals[0])).iterdir()}
    _DyingWriter.budget = 2 * 25 + 1  # goals 2 and 3 share a batch: 25 episodes each, then one more
    with pytest.raises(_Killed):
        generate_learning_histories(out, goals, n, seed=2, writer=_DyingWriter, progress=False)
    partial = out / task_name(goals[1])
    assert len([f for f in _files(partial) if f.endswith(".npz")]) == 26
    assert not json.loads((partial / SETTINGS_FILE).read_text())["complete"]

    summary = generate_learning_histories(out, goals, n, seed=2, progress=False)
    assert summary[task_name(goals[0])]["skipped"] and summary[task_name(goals[0])]["written"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / task_name(goals[0])).iterdir()} == done_files
    assert summary[task_name(goals[1])]["existing"] == 26 and summary[task_name(goals[1])]["written"] == n - 26
    assert summary[task_name(goals[2])]["existing"] == 25 and summary[task_name(goals[2])]["written"] == n - 25
    for goal in goals:
        assert not [f for f in _files(out / task_name(goal)) if f.endswith(".tmp")]
        td_ref, ref_eps = _read_all(ref / task_name(goal))
        td, eps = _read_all(out / task_name(goal))
        assert td.stems == td_ref.stems == [str(k) for k in range(n)]  # no duplicates, nothing missing
        for ea, eb in zip(ref_eps, eps):
            for f in ("states", "actions", "rewards", "dones", "returns_to_go"):
                np.testing.assert_array_equal(getattr(ea, f), getattr(eb, f))
            assert ea.info == eb.info

    with pytest.raises(DataError, match="seed") as e:
        generate_learning_histories(out, goals[:1], n, seed=3, progress=False)
    assert SETTINGS_FILE in str(e.value)
    with pytest.raises(DataError, match="episodes"):
        generate_learning_histories(out, goals[:1], n + 1, seed=2, progress=False)


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path), "--goals", "2,0;0,2", "--episodes-per-goal", "12", "--workers", "1", "--quiet",
                 "--format", "hdf5", "--algo", "q"]) == 0
    assert "darkroom_2_0" in capsys.readouterr().out
    td = open_task(tmp_path / "darkroom_0_2", progress=False)
    assert td.num_episodes == 12 and td.file(0).suffix == ".hdf5"
    assert json.loads((tmp_path / "darkroom_0_2" / SETTINGS_FILE).read_text())["learner"] == {
        **LearnerConfig(algo="q").__dict__}
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--goals", "11,0", "--quiet"])
    assert e.value.code == 2
    assert "goals[0]" in capsys.readouterr().err


def test_sweep_expert_searches_then_goes_straight_to_the_goal():
    """algo="sweep": the first episode of every goal finds the goal by a sweep that reaches every cell (so
    even the start cell), every later episode is optimal; noise only perturbs known-goal episodes."""
    from lram.data.generators.darkroom import LearnerConfig, learning_histories
    from lram.envs.darkroom import optimal_return

    goals = [(0, 0), (9, 9), (0, 9), (5, 3), (9, 0)]
    eps = [e for _, e in learning_histories(goals, 3, config=LearnerConfig(algo="sweep"))]
    for i, g in enumerate(goals):
        first, later = eps[0][i], [eps[k][i] for k in (1, 2)]
        assert first.total_return >= 1  # found within the first episode
        hit = int(np.argmax(first.rewards > 0))
        assert np.all(first.rewards[hit:] == 1)  # stays on the goal once found
        assert np.all(first.states[hit + 1 :] == np.array(g))  # (positions after the step that found it)
        for e in later:
            assert e.total_return == optimal_return(g)
    # the search order: stay, then right along row 0, down at its end, left along row 1
    far = eps[0][1]
    assert list(far.actions[:12]) == [4] + [1] * 9 + [2, 3]
    noisy = [e for _, e in learning_histories(goals, 3, config=LearnerConfig(algo="sweep", noise=0.5))]
    assert all(noisy[0][i].total_return == eps[0][i].total_return for i in range(len(goals)))
    assert any(noisy[2][i].total_return < optimal_return(g) for i, g in enumerate(goals))
    with pytest.raises(ValueError, match="noise"):
        LearnerConfig(algo="sweep", noise=1.5)
