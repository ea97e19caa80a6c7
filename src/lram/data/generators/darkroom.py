"""Dark-Room learning histories for in-context RL (Algorithm-Distillation-style data, spec 7.8).

For every goal, one learning agent starts from scratch and runs ``episodes_per_goal`` consecutive episodes
of :class:`lram.envs.darkroom.DarkRoom`; every episode is stored, in order, so that a model with several
episodes in its context sees an agent improve and can learn to improve in-context.

The learning agent (deterministic given ``seed`` and the goal; see :class:`LearnerConfig`):

* tabular Q-learning over the 100 positions x 5 actions, Q initialised to 0, learning rate ``lr``, discount
  ``gamma``; after every episode its transitions are replayed once backwards (the reward found at the goal
  reaches the start in one sweep instead of one step per visit);
* exploration: with probability epsilon_k a uniformly random action, epsilon_k decaying linearly from 1
  (episode 0 is a uniformly random policy) to 0 at episode ``explore_fraction * episodes_per_goal``, after
  which the agent is greedy; with ``algo="ucb_q"`` (default) the greedy choice maximises
  ``Q(s, a) + ucb_c / sqrt(1 + N(s, a))`` (a count-based, UCB-style bonus that steers the agent to the
  actions it has tried least), with ``algo="q"`` plain ``Q(s, a)``; ties are broken at random.

So the first episodes are (near) random and, once Q has converged, the last ones optimal: measured over
the 80 train goals with the defaults (dense variant), the mean return of the first / last 10% of the
episodes is 1.65 / 92.12 at 60 episodes per goal, 2.05 / 92.22 at 100 and 2.69 / 92.22 at 1000 (every
goal optimal at 100 and 1000), against 1.06 for the uniformly random policy and 92.22 optimal.

Layout (the paper's per-episode layout, written by ``lram.data.storage.PaperWriter`` by default)::

    <out_dir>/darkroom_<gx>_<gy>/<k>.npz|.hdf5   episode k of the goal's history (k = 0, 1, ...; plain integers)
    <out_dir>/darkroom_<gx>_<gy>/generator.json  the settings, "complete" and the history's statistics

(``darkroom<size>_<gx>_<gy>`` for rooms other than 10x10, ``darkroom<size>t<max_steps>_<gx>_<gy>`` for episodes
of other than 100 steps: :func:`task_name`.)  LRAM's own files are one pickle per goal named
``[0,0]_[gx,gy].pkl``; brackets are glob characters, hence the plain name.  Each episode has states float32
[T, 2] = (x, y), actions int64 [T], rewards float32 [T], dones (True at the last step), returns-to-go and
``info = {"goal": [gx, gy], "episode_index": k}``; T = 100 in the dense variant.

Resuming: episode k of a goal depends only on (seed, goal, settings), so an interrupted goal is simulated
again from the start and only its missing episode files are written; a goal whose ``generator.json`` says
complete is skipped; a folder made with other settings is refused.  Each episode file is written atomically
by the writer, so a killed run never leaves a half-written episode.
"""

from __future__ import annotations

import functools
import math
import queue as queue_mod
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import Episode
from lram.data.generators._common import (
    SETTINGS_FILE,
    add_recording_args,
    check_format,
    check_int,
    check_settings,
    existing_episodes,
    make_parser,
    mp_context,
    recording_kwargs,
    run_main,
)
from lram.envs.darkroom import (
    NUM_ACTIONS,
    VARIANTS,
    DarkRoomBatch,
    check_cell,
    check_config,
    goal_split,
    manhattan,
    optimal_return,
    random_policy_return,
)
from lram.utils.io import write_json_atomic

GENERATOR = "darkroom-learning-history"
ALGOS = ("ucb_q", "q", "sweep")
_EPISODE_FILE = re.compile(r"^(\d+)\.(hdf5|h5|npz)$")
_SETTING_KEYS = ("generator", "goal", "size", "max_steps", "variant", "start", "episodes", "seed", "learner", "format")

WriterFactory = Callable[[Path], AbstractContextManager]


@dataclass(frozen=True)
class LearnerConfig:
    """Hyper-parameters of the tabular learning agent (defaults measured to go from random to optimal)."""

    algo: str = "ucb_q"
    gamma: float = 0.9
    lr: float = 0.5
    explore_fraction: float = 0.8  # epsilon reaches 0 after this fraction of the history
    ucb_c: float = 0.1  # weight of the count bonus (algo "ucb_q" only)
    replay: bool = True  # one backward sweep over each finished episode
    noise: float = 0.0  # algo "sweep": probability of a uniformly random action at each step of a known-goal episode

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise ValueError(f"algo: expected one of {list(ALGOS)}, got {self.algo!r}")
        for name, lo, hi, lo_open in (("gamma", 0.0, 1.0, False), ("lr", 0.0, 1.0, True), ("explore_fraction", 0.0, 1.0, True)):
            v = getattr(self, name)
            number = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            if not number or v > hi or v < lo or (lo_open and v == lo):
                raise ValueError(f"{name}: expected a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
        if self.gamma >= 1.0:
            raise ValueError(f"gamma: expected a discount in [0, 1), got {self.gamma!r}")
        if isinstance(self.ucb_c, bool) or not isinstance(self.ucb_c, (int, float)) or not self.ucb_c >= 0:
            raise ValueError(f"ucb_c: expected a number >= 0, got {self.ucb_c!r}")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not 0 <= self.noise <= 1:
            raise ValueError(f"noise: expected a probability in [0, 1], got {self.noise!r}")


def task_name(goal: Sequence[int], size: int = 10, max_steps: int = 100) -> str:
    """The task folder of a goal: ``darkroom_<gx>_<gy>`` in the 10x10 room with 100-step episodes, else
    ``darkroom<size>_<gx>_<gy>`` (other sizes) and ``darkroom<size>t<max_steps>_<gx>_<gy>`` (other episode
    lengths), so that the evaluation environment built from the name is the one the data came from."""
    room = "darkroom" if size == 10 and max_steps == 100 else f"darkroom{size}"
    if max_steps != 100:
        room += f"t{max_steps}"
    return f"{room}_{int(goal[0])}_{int(goal[1])}"


def epsilon(k: int, episodes: int, explore_fraction: float) -> float:
    """Exploration rate of episode ``k``: 1 at k = 0, linearly down to 0 at ``explore_fraction * episodes``."""
    return max(0.0, 1.0 - k / max(explore_fraction * episodes, 1e-9))


def _rng(seed: int, goal: Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(goal[0]), int(goal[1])]))


@dataclass
class EpisodeBatch:
    """Episode ``k`` of every agent: arrays [N, max_steps, ...], valid up to ``lengths`` [N]."""

    k: int
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray

    def episode(self, i: int, goal: Sequence[int]) -> Episode:
        n = int(self.lengths[i])
        dones = np.zeros(n, dtype=bool)
        dones[-1] = True
        info = {"goal": [int(goal[0]), int(goal[1])], "episode_index": int(self.k)}
        return Episode(self.states[i, :n].copy(), self.actions[i, :n].copy(), self.rewards[i, :n].copy(), dones, info=info)


class QLearners:
    """One tabular Q-learning agent per goal, all stepped together in a :class:`DarkRoomBatch`.

    Every agent draws its random numbers from its own generator seeded by ``(seed, gx, gy)`` and all
    updates are per agent, so an agent's history is the same whichever goals share its batch.
    """

    def __init__(self, goals: Sequence[Sequence[int]], episodes: int, config: LearnerConfig = LearnerConfig(), seed: int = 0,
                 size: int = 10, max_steps: int = 100, variant: str = "dense", start: Sequence[int] = (0, 0)):
        self.env = DarkRoomBatch(goals, size=size, max_steps=max_steps, variant=variant, start=start)
        self.goals = [tuple(int(v) for v in g) for g in self.env.goals]
        self.episodes, self.config, self.size, self.max_steps = int(episodes), config, int(size), int(max_steps)
        n = self.env.num_envs
        self.q = np.zeros((n, size * size, NUM_ACTIONS))
        self.counts = np.zeros((n, size * size, NUM_ACTIONS))
        self.rngs = [_rng(seed, g) for g in self.goals]

    def _update(self, live, s, a, r, term, s2) -> None:
        cfg, rows = self.config, np.flatnonzero(live)
        s, a = s[rows], a[rows]
        nxt = np.where(term[rows], 0.0, self.q[rows, s2[rows]].max(axis=1))
        target = r[rows] + cfg.gamma * nxt
        self.q[rows, s, a] += cfg.lr * (target - self.q[rows, s, a])

    def run(self) -> Iterator[EpisodeBatch]:
        """Run the histories; yields episode 0, 1, ... of all agents (each batch is a fresh allocation)."""
        env, cfg, size, T, A = self.env, self.config, self.size, self.max_steps, NUM_ACTIONS
        n = env.num_envs
        rows = np.arange(n)
        for k in range(self.episodes):
            eps = epsilon(k, self.episodes, cfg.explore_fraction)
            u = np.stack([rng.random((T, 2 + A)) for rng in self.rngs])  # [N, T, explore?, random action, tie-break]
            states = np.zeros((n, T, 2), dtype=np.float32)
            actions = np.zeros((n, T), dtype=np.int64)
            rewards = np.zeros((n, T), dtype=np.float32)
            lengths = np.zeros(n, dtype=np.int64)
            env.reset()
            trace = []
            for t in range(T):
                live = ~env.done
                if not live.any():
                    break
                pos = env.pos
                s = pos[:, 1] * size + pos[:, 0]
                values = self.q[rows, s]
                if cfg.algo == "ucb_q":
                    values = values + cfg.ucb_c / np.sqrt(1.0 + self.counts[rows, s])
                best = values >= values.max(axis=1, keepdims=True) - 1e-12
                greedy = np.argmax(np.where(best, u[:, t, 2:], -1.0), axis=1)
                random_action = np.minimum((u[:, t, 1] * A).astype(np.int64), A - 1)
                a = np.where(u[:, t, 0] < eps, random_action, greedy)
                states[:, t] = pos
                actions[:, t] = a
                _, r, term, _ = env.step(a)
                s2 = env.pos[:, 1] * size + env.pos[:, 0]
                self._update(live, s, a, r, term, s2)
                live_rows = np.flatnonzero(live)
                self.counts[live_rows, s[live_rows], a[live_rows]] += 1
                rewards[:, t] = r
                lengths += live
                trace.append((live, s, a, r, term, s2))
            if cfg.replay:
                for step in reversed(trace):
                    self._update(*step)
            yield EpisodeBatch(k, states, actions, rewards, lengths)


class SweepExperts:
    """An in-context expert per goal (``algo="sweep"``): it searches the room until it finds the goal, then
    goes straight to it in every later episode -- the behaviour an in-context learner should distil.

    Searching stays put for the first step (is the start the goal?), then is a boustrophedon sweep that is a
    function of the position only (row y even: right, row y odd: left, down at the row's end), so every cell
    has one search action and the sweep reaches every cell within an episode; the first reward ends the search
    (the agent stays on the goal from then on, as the dense variant rewards).  Once the goal is known (from the
    first episode that found it) each episode takes a shortest path, choosing at random (own generator per
    goal) which axis to move along when both are open, with a uniformly random action at probability
    ``noise`` per step, and stays on the goal.  Same interface as :class:`QLearners`."""

    def __init__(self, goals: Sequence[Sequence[int]], episodes: int, config: LearnerConfig = LearnerConfig("sweep"),
                 seed: int = 0, size: int = 10, max_steps: int = 100, variant: str = "dense", start: Sequence[int] = (0, 0)):
        self.env = DarkRoomBatch(goals, size=size, max_steps=max_steps, variant=variant, start=start)
        self.goals = [tuple(int(v) for v in g) for g in self.env.goals]
        self.episodes, self.config, self.size, self.max_steps = int(episodes), config, int(size), int(max_steps)
        self.known = np.zeros(self.env.num_envs, dtype=bool)
        self.rngs = [_rng(seed, g) for g in self.goals]

    def _sweep(self, pos: np.ndarray) -> np.ndarray:
        x, y, last = pos[:, 0], pos[:, 1], self.size - 1
        even = y % 2 == 0
        along = np.where(even, 1, 3)  # right on even rows, left on odd rows
        at_end = np.where(even, x == last, x == 0)
        return np.where(at_end, np.where(y == last, 4, 2), along)

    def _towards(self, pos: np.ndarray, u: np.ndarray) -> np.ndarray:
        goal = np.array(self.goals)
        dx, dy = goal[:, 0] - pos[:, 0], goal[:, 1] - pos[:, 1]
        move_x = np.where(dx > 0, 1, 3)
        move_y = np.where(dy > 0, 2, 0)
        both = (dx != 0) & (dy != 0)
        use_x = np.where(both, u < 0.5, dx != 0)
        return np.where((dx == 0) & (dy == 0), 4, np.where(use_x, move_x, move_y))

    def run(self) -> Iterator[EpisodeBatch]:
        env, T, n = self.env, self.max_steps, self.env.num_envs
        for k in range(self.episodes):
            u = np.stack([rng.random((T, 3)) for rng in self.rngs])  # [N, T, (axis, noise?, random action)]
            states = np.zeros((n, T, 2), dtype=np.float32)
            actions = np.zeros((n, T), dtype=np.int64)
            rewards = np.zeros((n, T), dtype=np.float32)
            lengths = np.zeros(n, dtype=np.int64)
            env.reset()
            found = self.known.copy()  # found in this episode (or known before)
            for t in range(T):
                live = ~env.done
                if not live.any():
                    break
                pos = env.pos.copy()
                search = self._sweep(pos) if t > 0 else np.full(n, 4)  # the first search step tries the start cell
                a = np.where(found, self._towards(pos, u[:, t, 0]), search)
                noisy = self.known & (u[:, t, 1] < self.config.noise)
                a = np.where(noisy, np.minimum((u[:, t, 2] * NUM_ACTIONS).astype(np.int64), NUM_ACTIONS - 1), a)
                states[:, t] = pos
                actions[:, t] = a
                _, r, _, _ = env.step(a)
                found |= live & (r > 0)
                rewards[:, t] = r
                lengths += live
            self.known |= found
            yield EpisodeBatch(k, states, actions, rewards, lengths)


def _agents(goals, episodes, config: LearnerConfig, seed, size, max_steps, variant, start):
    cls = SweepExperts if config.algo == "sweep" else QLearners
    return cls(goals, episodes, config, seed, size, max_steps, variant, start)


def learning_histories(goals: Sequence[Sequence[int]], episodes_per_goal: int, algo: str = "ucb_q", seed: int = 0,
                       size: int = 10, max_steps: int = 100, variant: str = "dense", start: Sequence[int] = (0, 0),
                       config: LearnerConfig | None = None) -> Iterator[tuple[int, list[Episode]]]:
    """In memory: yields ``(k, [episode k of each goal])`` for k = 0 .. episodes_per_goal - 1."""
    config = config or LearnerConfig(algo=algo)
    learners = _agents(goals, episodes_per_goal, config, seed, size, max_steps, variant, start)
    for batch in learners.run():
        yield batch.k, [batch.episode(i, g) for i, g in enumerate(learners.goals)]


def history_stats(returns: np.ndarray, lengths: np.ndarray, goal: Sequence[int], size: int = 10, max_steps: int = 100,
                  variant: str = "dense", start: Sequence[int] = (0, 0)) -> dict:
    """Did the history improve?  Mean return / length of its first and last 10% against random and optimal."""
    m = max(1, len(returns) // 10)
    d = manhattan(goal, start)
    return {
        "first_return": round(float(np.mean(returns[:m])), 4),
        "last_return": round(float(np.mean(returns[-m:])), 4),
        "random_return": round(random_policy_return(goal, size, start, max_steps, variant), 4),
        "optimal_return": optimal_return(goal, start, max_steps, variant),
        "first_length": round(float(np.mean(lengths[:m])), 2),
        "last_length": round(float(np.mean(lengths[-m:])), 2),
        "optimal_length": max(d, 1) if variant == "sparse" else max_steps,
        "window": m,
    }


# ----------------------------------------------------------------------------------------------- files


def _prepare_task(task_dir: Path, settings: dict) -> dict | None:
    """Check / create the folder's settings file; returns the stored settings if the goal is complete."""
    old = check_settings(task_dir, settings, _SETTING_KEYS, initial={**settings, "complete": False},
                         remedy="delete the task folder to generate it anew", pattern=_EPISODE_FILE)
    return old if old is not None and old.get("complete") else None


def _default_writer(task_dir: Path, fmt: str, compress: bool):
    from lram.data.storage import PaperWriter

    return PaperWriter(task_dir, fmt=fmt, compress=compress, progress=False)  # our own bar shows the progress


# ----------------------------------------------------------------------------------------------- work


@dataclass
class _Job:
    out_dir: Path
    goals: list[tuple[int, int]]
    settings: list[dict]
    episodes: int
    config: LearnerConfig
    seed: int
    size: int
    max_steps: int
    variant: str
    start: tuple[int, int]
    writer: WriterFactory


def _run_job(job: _Job, report: Callable[[int], None]) -> dict[str, dict]:
    """Simulate the histories of ``job.goals`` together and write their missing episodes; mark them complete."""
    names = [task_name(g, job.size, job.max_steps) for g in job.goals]
    dirs = [job.out_dir / name for name in names]
    learners = _agents(job.goals, job.episodes, job.config, job.seed, job.size, job.max_steps, job.variant, job.start)
    n = len(job.goals)
    returns = np.zeros((n, job.episodes))
    lengths = np.zeros((n, job.episodes), dtype=np.int64)
    written = [0] * n
    t0 = time.perf_counter()
    with ExitStack() as stack:
        writers = [stack.enter_context(job.writer(d)) for d in dirs]
        # the episodes already stored: asked from the writer (it indexes what an interrupted run left), else the files
        have = [{k for k in range(job.episodes) if str(k) in w} if hasattr(type(w), "__contains__")
                else existing_episodes(d, _EPISODE_FILE) & set(range(job.episodes)) for w, d in zip(writers, dirs)]
        for batch in learners.run():
            k = batch.k
            returns[:, k] = batch.rewards.sum(axis=1, dtype=np.float64)
            lengths[:, k] = batch.lengths
            for i, goal in enumerate(job.goals):
                if k not in have[i]:
                    writers[i].write(batch.episode(i, goal), stem=str(k))
                    written[i] += 1
            report(n)
    seconds = time.perf_counter() - t0
    out = {}
    for i, goal in enumerate(job.goals):
        stats = history_stats(returns[i], lengths[i], goal, job.size, job.max_steps, job.variant, job.start)
        write_json_atomic(dirs[i] / SETTINGS_FILE, {**job.settings[i], "complete": True, "stats": stats})
        out[names[i]] = {"goal": list(goal), "episodes": job.episodes, "existing": len(have[i]),
                         "written": written[i], "skipped": False, "seconds": round(seconds, 3), **stats}
    return out


_progress_queue = None


def _init_worker(q) -> None:
    global _progress_queue
    _progress_queue = q


def _run_job_in_worker(job: _Job) -> dict[str, dict]:
    return _run_job(job, _progress_queue.put)


def _resolve_goals(goals, size: int) -> list[tuple[int, int]]:
    if isinstance(goals, str):
        if goals in ("train", "test", "all"):
            return goal_split(goals, size)
        try:
            goals = [tuple(int(v) for v in part.split(",")) for part in goals.replace(" ", ";").split(";") if part]
        except ValueError:
            raise ValueError(f"goals: expected 'train', 'test', 'all' or 'gx,gy;gx,gy;...', got {goals!r}") from None
    out = [check_cell(f"goals[{i}]", g, size) for i, g in enumerate(goals)]
    if not out:
        raise ValueError("goals: expected at least one goal, got none")
    if len(set(out)) != len(out):
        dup = next(g for g in out if out.count(g) > 1)
        raise ValueError(f"goals: goal {dup} is listed twice (one task folder per goal)")
    return out


def generate_learning_histories(
    out_dir: str | Path,
    goals: str | Sequence[Sequence[int]],
    episodes_per_goal: int,
    algo: str = "ucb_q",
    seed: int = 0,
    workers: int = 1,
    writer: WriterFactory | None = None,
    *,
    fmt: str = "npz",
    compress: bool = False,
    size: int = 10,
    max_steps: int = 100,
    variant: str = "dense",
    start: Sequence[int] = (0, 0),
    config: LearnerConfig | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Write one learning history per goal into ``out_dir/<task_name(goal)>/`` (resumable).

    ``goals``: 'train' / 'test' / 'all' (:func:`lram.envs.darkroom.goal_split`), ``"gx,gy;gx,gy"`` or a list
    of (gx, gy).  ``writer(task_dir)`` returns a context manager with ``write(episode, stem=None)``; default
    ``PaperWriter(task_dir, fmt=fmt, compress=compress)``.  ``workers`` > 1 splits the goals over that many
    processes (each simulates its goals together and writes their folders).  ``config`` overrides ``algo``.
    Returns per task: goal, episodes, existing, written, skipped, and :func:`history_stats`.
    """
    check_config(size, max_steps, variant)
    episodes = check_int("episodes_per_goal", episodes_per_goal, 1)
    seed = check_int("seed", seed, 0)
    workers = check_int("workers", workers, 0)
    check_format(fmt, ("npz", "hdf5"))
    config = config or LearnerConfig(algo=algo)
    start = check_cell("start", start, size)
    goal_list = _resolve_goals(goals, size)
    out_dir = Path(out_dir)
    factory = writer or functools.partial(_default_writer, fmt=fmt, compress=compress)

    summary: dict[str, dict] = {}
    todo: list[tuple[tuple[int, int], dict]] = []
    for goal in goal_list:
        name = task_name(goal, size, max_steps)
        settings = {
            "generator": GENERATOR, "goal": list(goal), "size": size, "max_steps": max_steps, "variant": variant,
            "start": list(start), "episodes": episodes, "seed": seed, "learner": asdict(config), "format": fmt,
            "compress": bool(compress),
        }  # fmt: skip
        done = _prepare_task(out_dir / name, settings)
        if done is not None:
            summary[name] = {"goal": list(goal), "episodes": episodes, "existing": episodes, "written": 0, "skipped": True,
                             "seconds": 0.0, **done.get("stats", {})}
        else:
            todo.append((goal, settings))

    n_jobs = min(max(workers, 1), len(todo))
    jobs = [
        _Job(out_dir, [todo[i][0] for i in part], [todo[i][1] for i in part], episodes, config, seed, size, max_steps,
             variant, start, factory)
        for part in np.array_split(np.arange(len(todo)), n_jobs) if len(part)
    ] if todo else []  # fmt: skip
    with tqdm(total=len(todo) * episodes, unit="ep", desc="darkroom", disable=not progress, dynamic_ncols=True) as bar:
        if len(jobs) <= 1:
            for job in jobs:
                summary.update(_run_job(job, bar.update))
        else:
            ctx = mp_context("fork")
            q = ctx.Queue()
            with ctx.Pool(len(jobs), initializer=_init_worker, initargs=(q,)) as pool:
                pending = [pool.apply_async(_run_job_in_worker, (job,)) for job in jobs]
                while pending:
                    try:
                        bar.update(q.get(timeout=0.2))
                    except queue_mod.Empty:
                        pass
                    for res in [p for p in pending if p.ready()]:
                        pending.remove(res)
                        summary.update(res.get())  # re-raises a worker's exception here
                while True:
                    try:
                        bar.update(q.get_nowait())
                    except queue_mod.Empty:
                        break
    names = {g: task_name(g, size, max_steps) for g in goal_list}
    return {names[g]: summary[names[g]] for g in goal_list}


def format_summary(summary: dict[str, dict]) -> str:
    """A plain-text table of :func:`generate_learning_histories`'s result, with the means over goals."""
    head = f"{'task':<16}{'episodes':>9}{'new':>7}{'first10%':>10}{'last10%':>9}{'random':>8}{'optimal':>8}"
    lines = [head]
    for name, s in summary.items():
        lines.append(f"{name:<16}{s['episodes']:>9}{s['written']:>7}{s.get('first_return', float('nan')):>10.2f}"
                     f"{s.get('last_return', float('nan')):>9.2f}{s.get('random_return', float('nan')):>8.2f}"
                     f"{s.get('optimal_return', float('nan')):>8.1f}")
    if summary:
        mean = {k: float(np.mean([s.get(k, np.nan) for s in summary.values()]))
                for k in ("first_return", "last_return", "random_return", "optimal_return")}
        written = sum(s["written"] for s in summary.values())
        lines.append(f"{'mean':<16}{'':>9}{written:>7}{mean['first_return']:>10.2f}{mean['last_return']:>9.2f}"
                     f"{mean['random_return']:>8.2f}{mean['optimal_return']:>8.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``lram data generate darkroom OUT ...`` (``argv``: the arguments after ``darkroom``)."""
    p = make_parser("darkroom", "Generate Dark-Room learning histories (one tabular Q-learning agent per goal, from random "
                    "to optimal, every episode stored in order).",
                    "output root; one folder darkroom_<gx>_<gy> per goal is created in it")
    p.add_argument("--goals", default="train", help="'train' (80), 'test' (20), 'all' or 'gx,gy;gx,gy;...' (default: train)")
    p.add_argument("--episodes-per-goal", type=int, default=1000, help="episodes in each goal's history (default: 1000)")
    p.add_argument("--algo", choices=ALGOS, default="ucb_q",
                   help="learning agent: ucb_q (default), q, or sweep (an in-context expert: searches the room until it "
                        "finds the goal, then goes straight to it in every later episode)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="sweep only: probability of a random action per step once the goal is known (default: 0)")
    p.add_argument("--variant", choices=VARIANTS, default="dense", help="reward variant (default: dense)")
    p.add_argument("--size", type=int, default=10, help="room size (default: 10)")
    p.add_argument("--max-steps", type=int, default=100, help="episode length (default: 100)")
    add_recording_args(p, fmt="npz", workers="processes")
    t0 = time.perf_counter()
    return run_main(p, argv, lambda a: generate_learning_histories(
        a.out, a.goals, a.episodes_per_goal, algo=a.algo, config=LearnerConfig(algo=a.algo, noise=a.noise),
        size=a.size, max_steps=a.max_steps, variant=a.variant, **recording_kwargs(a),
    ), lambda summary, a: f"{format_summary(summary)}\n{len(summary)} goals in {a.out} ({time.perf_counter() - t0:.1f} s)")

if __name__ == "__main__":
    raise SystemExit(main())
