"""lram's Dark-Room against the real one: a MiniHack room (nle 1.3.0, minihack 1.0.2), step by step.

The MiniHack rooms are built as the paper built its Dark-Room: MiniHack's ``LevelGenerator`` writes a
``size x size`` room (10x10 as in the paper, and 5x5 as MiniHack's own ``Room-Dark-5x5``), the agent starts in
the top-left cell (``set_start_pos((0, 0))``), the actions are the 4 cardinal moves N, E, S, W plus ``.``
(rest), in that order, and the time penalty is off (``penalty_step=0``; MiniHack's default takes 0.01 off a
step that uses no game time, i.e. a bump into a wall).  Two kinds of goal:

* ``stairs``: the goal staircase of MiniHack's ``Room-Dark`` (``add_goal_pos``; the paper's
  ``MiniHack-Room-Dark-10x10-v0`` config), compared with lram's ``variant="sparse"``;
* ``fountain``: a fountain with a repeatable +1 location event (the paper's ``Room-Dark-Dense``, RA-DT's
  data), compared with lram's ``variant="dense"``.

MiniHack's position is ``blstats[0:2]`` = (column, row) of its 21x79 map, minus the room's top-left cell,
which is measured from the drawn floor of a lit room (``ORIGIN``), not taken from the agent's start.

What matches, on every step before MiniHack's last one: the position (moves, wall bumps that leave the agent
in place, the no-op), the reward (+1 on a step ending on the goal, 0 otherwise) and the flags (both running);
the (x, y) convention of goals and positions (``x`` the column); the start cell; the room size; on a step that
reaches the stairs, reward 1 and ``terminated`` in both.  The paper's observation ``tty_cursor - (8, 34)`` is
``(y, x)`` (its wrapper's origin for size 10).

What differs, by design, and is asserted so that a change shows:

* the step limit: lram ends step 100 with ``truncated=True`` and rewards it like any other step; MiniHack
  aborts the game on step 100 (``terminated=True``, ``truncated=False``, ``end_status`` ABORTED) with reward 0
  even on the goal (its reward manager and stair check are not consulted on that step), so a dense return that
  ends on the goal is 1 lower in MiniHack and a staircase first reached on step 100 scores 0;
* the observation after MiniHack's last step is that of the quit game (``blstats`` zeroed), not a position;
* a goal on the start cell: MiniHack cannot put the goal where the agent starts (the up-stair branch), and the
  agent starts elsewhere; lram allows it (its train split holds (0, 0));
* the fountain event is "the fountain is not on screen", right only in a lit room: in an unlit one it pays +1
  on steps away from the goal.  The paper's rooms are lit (``lit=True`` is its default); "dark" means that the
  agent observes only its position;
* the paper's ``Room-Dark-Sparse`` (+1 once, the episode goes on) has no lram variant: lram's sparse ends at
  the goal, like the staircase.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

from lram.envs.darkroom import MOVES, DarkRoom

if importlib.util.find_spec("nle") is None or importlib.util.find_spec("minihack") is None:
    pytest.skip("MiniHack is not installed: `make setup` installs it (the MINIHACK pins in the Makefile: "
                "nle==1.3.0 minihack==1.0.2 setuptools==80.10.2, with --no-deps)", allow_module_level=True)

with warnings.catch_warnings():  # minihack 1.0.2 imports pkg_resources (setuptools < 82), which warns
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from minihack import LevelGenerator, MiniHackNavigation, RewardManager
    from nle import nethack

# lram's actions in MiniHack: up, right, down, left, no-op (rest)
ACTIONS = (nethack.CompassDirection.N, nethack.CompassDirection.E, nethack.CompassDirection.S,
           nethack.CompassDirection.W, ord("."))
# the room's top-left cell in MiniHack's map (column, row), measured in test_room_geometry_and_coordinates
ORIGIN = {5: (36, 9), 10: (34, 7)}
PAPER_TTY_ORIGIN = (8, 34)  # the paper's ToRealCoordinateWrapper for size 10: (row, column) of the room's corner
STEPS = 100
ABORTED, RUNNING, SUCCESS = (int(s) for s in (MiniHackNavigation.StepStatus.ABORTED,
                                              MiniHackNavigation.StepStatus.RUNNING,
                                              MiniHackNavigation.StepStatus.TASK_SUCCESSFUL))
VARIANT = {"stairs": "sparse", "fountain": "dense"}
FLOOR = [ord(c) for c in ".@{>"]


class Room:
    """One MiniHack room; positions in lram's (x, y) of the room."""

    def __init__(self, size: int, goal, kind: str, lit: bool, steps: int = STEPS):
        gen = LevelGenerator(w=size, h=size, lit=lit)
        gen.set_start_pos((0, 0))
        kwargs = {}
        if kind == "stairs":
            gen.add_goal_pos(tuple(goal))
        else:
            gen.add_fountain(place=tuple(goal))
            rm = RewardManager()
            rm.add_location_event(location="fountain", reward=1, repeatable=True)
            kwargs["reward_manager"] = rm
        self.size = size
        self.env = MiniHackNavigation(des_file=gen.get_des(), actions=ACTIONS, penalty_step=0, max_episode_steps=steps,
                                      observation_keys=("blstats", "chars", "tty_cursor"), **kwargs)
        self.obs = None

    def _pos(self):
        ox, oy = ORIGIN[self.size]
        return int(self.obs["blstats"][0]) - ox, int(self.obs["blstats"][1]) - oy

    def reset(self):
        self.obs, _ = self.env.reset()
        return self._pos()

    def step(self, a):
        self.obs, r, term, trunc, info = self.env.step(a)
        return self._pos(), float(r), bool(term), bool(trunc), int(info["end_status"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.env.close()


def run_both(size, goal, kind, lit, actions, steps=STEPS):
    """Step both rooms with the same actions until MiniHack's episode ends; returns (minihack, lram) step lists."""
    ours = DarkRoom(size=size, goal=goal, variant=VARIANT[kind], max_steps=steps)
    ours.reset()
    mh, lr = [], []
    with Room(size, goal, kind, lit, steps) as room:
        assert room.reset() == (0, 0)
        for a in actions:
            mh.append(room.step(a))
            obs, r, term, trunc, _ = ours.step(a)
            lr.append(((int(obs[0]), int(obs[1])), r, term, trunc))
            if mh[-1][2] or mh[-1][3]:
                break
    return mh, lr


def check_agree(size, goal, kind, lit, actions, steps=STEPS):
    """Assert the documented agreement of one episode; returns both step lists."""
    mh, lr = run_both(size, goal, kind, lit, actions, steps)
    assert len(mh) == len(lr), "MiniHack and lram end their episodes on different steps"
    *before, (_, mh_r, mh_term, mh_trunc, status) = mh
    *lr_before, (lr_pos, lr_r, lr_term, lr_trunc) = lr
    for t, (m, ll) in enumerate(zip(before, lr_before), 1):
        assert m == (*ll, RUNNING), f"step {t}: MiniHack {m} vs lram {ll}"
    on_goal = lr_pos == tuple(goal)
    assert lr_r == float(on_goal)
    if status == SUCCESS:  # the staircase reached before the step limit: both pay 1 and terminate
        assert (mh_r, mh_term, mh_trunc) == (lr_r, lr_term, lr_trunc) == (1.0, True, False)
        assert kind == "stairs" and on_goal and len(mh) < steps
    else:  # the step limit: MiniHack aborts with reward 0; lram pays a step on the goal and truncates (sparse: ends)
        assert len(mh) == steps and status == ABORTED
        assert (mh_r, mh_term, mh_trunc) == (0.0, True, False)
        assert (lr_term, lr_trunc) == ((True, False) if on_goal and kind == "stairs" else (False, True))
    return mh, lr


def towards(rng, pos, goal, p_greedy):
    """A random action, or with probability p_greedy one that moves towards the goal."""
    dx, dy = goal[0] - pos[0], goal[1] - pos[1]
    if (dx or dy) and rng.random() < p_greedy:
        return 1 if dx > 0 else 3 if dx < 0 else 2 if dy > 0 else 0
    return int(rng.integers(len(MOVES)))


def biased_walk(seed, size, goal, p_greedy, steps=STEPS):
    """Actions of a walk that drifts towards the goal (computed with lram's dynamics; both rooms replay it)."""
    rng, pos, acts = np.random.default_rng(seed), (0, 0), []
    for _ in range(steps):
        a = towards(rng, pos, goal, p_greedy)
        acts.append(a)
        pos = tuple(int(v) for v in np.clip(np.add(pos, MOVES[a]), 0, size - 1))
    return acts


def fixed_sequences(size, goal, steps=STEPS):
    gx, gy = goal
    path = [1] * gx + [2] * gy  # right, then down, to the goal
    seqs = {
        "walls": [0, 3, 0, 3] + [1] * (size + 2) + [0] + [2] * (size + 2) + [1, 4, 3] * steps,  # bump every wall
        "path-then-rest": path + [4] * steps,
        "path-off-on": path + [1, 3, 2, 0, 4] * steps,  # step off the goal and back
        "rest": [4] * steps,
    }
    return {k: v[:steps] for k, v in seqs.items()}


CASES = [(5, "stairs", False), (10, "stairs", False), (10, "stairs", True), (5, "fountain", True), (10, "fountain", True)]


@pytest.mark.parametrize("size", [5, 10])
def test_room_geometry_and_coordinates(size):
    goal = (size - 2, size - 1)
    with Room(size, goal, "fountain", lit=True) as room:
        assert room.reset() == (0, 0)
        rows, cols = np.nonzero(np.isin(room.obs["chars"], FLOOR))  # the lit room's drawn cells
        assert (cols.min(), rows.min()) == ORIGIN[size]  # the agent starts in the room's top-left cell
        assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == (size, size)
        ox, oy = ORIGIN[size]
        assert chr(room.obs["chars"][oy + goal[1], ox + goal[0]]) == "{"  # des-file (x, y) = (column, row)
        assert chr(room.obs["chars"][oy, ox]) == "@"
        if size == 10:  # the paper's observation: tty_cursor minus its origin, i.e. (y, x)
            assert tuple(room.obs["tty_cursor"] - PAPER_TTY_ORIGIN) == (0, 0)
            room.step(1)
            room.step(2)
            pos, *_ = room.step(1)
            assert pos == (2, 1) and tuple(room.obs["tty_cursor"] - PAPER_TTY_ORIGIN) == (1, 2)


@pytest.mark.parametrize("size,kind,lit", CASES)
def test_positions_and_rewards_match(size, kind, lit):
    # the fountain's location event scans the screen (~4 ms a step): shorter episodes there, same rules at the limit
    steps = STEPS if kind == "stairs" else 40
    rng = np.random.default_rng(size * 10 + len(kind) + lit)
    goals = [(size - 1, size - 1), (1, 0), (0, 1), (size - 1, 0), (2, 3)]
    goals += [tuple(int(v) for v in rng.integers(size, size=2)) for _ in range(3 if kind == "stairs" else 0)]
    goals = [g for g in dict.fromkeys(goals) if g != (0, 0)]  # (0, 0): see test_goal_on_the_start_cell
    ends = {"goal": 0, "limit": 0}
    rewarded = 0
    for i, goal in enumerate(goals):
        seqs = fixed_sequences(size, goal, steps) if i < 2 else {}
        seqs["random"] = [int(a) for a in rng.integers(len(MOVES), size=steps)]
        seqs["drift"] = biased_walk(int(rng.integers(1 << 30)), size, goal, 0.3, steps)
        for acts in seqs.values():
            mh, _ = check_agree(size, goal, kind, lit, acts, steps)
            ends["goal" if mh[-1][4] == SUCCESS else "limit"] += 1
            rewarded += sum(m[1] > 0 for m in mh)
    # the comparison covered both kinds of episode end and paid steps, not only empty walks
    assert rewarded > 0 and ends["limit"] > 0
    if kind == "stairs":
        assert ends["goal"] > 0
    else:
        assert ends["goal"] == 0 and rewarded > len(goals)  # dense: paid again and again, never ends early


def test_step_limit_differs():
    goal = (1, 0)
    acts = [1] + [4] * (STEPS - 1)  # onto the goal, then rest there until the limit
    mh, lr = check_agree(10, goal, "fountain", True, acts)
    assert sum(m[1] for m in mh) == STEPS - 1 and sum(ll[1] for ll in lr) == STEPS  # lram pays step 100 too
    # the staircase first reached on step 100: lram pays and terminates, MiniHack aborts with reward 0
    acts = [4] * (STEPS - 1) + [1]
    mh, lr = check_agree(10, goal, "stairs", False, acts)
    assert mh[-1][1:5] == (0.0, True, False, ABORTED) and lr[-1] == (goal, 1.0, True, False)
    assert mh[-1][0] == (-ORIGIN[10][0], -ORIGIN[10][1])  # the quit game's blstats are zero, not a position


@pytest.mark.parametrize("kind", ["stairs", "fountain"])
def test_goal_on_the_start_cell(kind):
    """lram can put the goal on the start cell (its train split has (0, 0)); MiniHack moves the start away
    (to a random cell: 40 of 40 resets of each kind kept the goal at (0, 0) and started elsewhere)."""
    with Room(10, (0, 0), kind, lit=True) as room:
        start = room.reset()
        assert start != (0, 0) and 0 <= start[0] < 10 and 0 <= start[1] < 10
        ox, oy = ORIGIN[10]
        assert chr(room.obs["chars"][oy, ox]) == (">" if kind == "stairs" else "{")  # the goal stays at (0, 0)
    ours = DarkRoom(size=10, goal=(0, 0), variant=VARIANT[kind])
    assert tuple(ours.reset()[0]) == (0, 0) and ours.step(4)[1] == 1.0


def test_fountain_event_needs_a_lit_room():
    """In an unlit room the fountain's location event pays away from the goal: why the oracle's room is lit."""
    goal, acts = (9, 9), [1, 2] * 3
    with Room(10, goal, "fountain", lit=False) as room:
        room.reset()
        steps = [room.step(a) for a in acts]
    assert all(pos != goal for pos, *_ in steps) and sum(r for _, r, *_ in steps) > 0
    ours = DarkRoom(size=10, goal=goal, variant="dense")
    ours.reset()
    assert sum(ours.step(a)[1] for a in acts) == 0
