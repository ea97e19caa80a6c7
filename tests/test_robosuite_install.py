"""robosuite 1.5 as `make setup` installs it (issue 11): on numpy 2, without mink, deterministic under a seed.

The Composuite and MimicGen environments will be built on it; this checks the installation they rely on.
"""

from __future__ import annotations

import numpy as np


def make_lift(seed: int):
    import robosuite

    return robosuite.make("Lift", robots="Panda", has_renderer=False, has_offscreen_renderer=False,
                          use_camera_obs=False, seed=seed)


def rollout(seed: int, steps: int = 15) -> list[np.ndarray]:
    env = make_lift(seed)
    try:
        obs = [env.reset()["cube_pos"].copy()]
        actions = np.random.default_rng(0).uniform(-1, 1, (steps, env.action_dim))
        for a in actions:
            o, _, _, _ = env.step(a)
            obs.append(np.concatenate([o["cube_pos"], o["robot0_eef_pos"]]))
        return obs
    finally:
        env.close()


def test_robosuite_runs_on_numpy_2_without_mink():
    import importlib.util

    import robosuite

    assert robosuite.__version__ == "1.5.2"
    assert int(np.__version__.split(".")[0]) >= 2
    assert importlib.util.find_spec("mink") is None  # the numpy<2 dependency stays out


def test_robosuite_is_deterministic_under_a_seed():
    a, b, c = rollout(3), rollout(3), rollout(4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])  # another seed places the cube elsewhere
    assert np.linalg.norm(a[-1][3:] - a[1][3:]) > 1e-3  # the actions moved the arm
