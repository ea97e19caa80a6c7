"""The built wheel carries the package data the code needs (the demo's recipe) and works outside the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "lram/configs/cpu_tiny.yaml"

# run from the unpacked wheel: prints where lram came from and the demo's training config
PROBE = """
import json, sys
from pathlib import Path
import lram
from lram.demo import DemoBudget, demo_config, recipe_path
cfg = demo_config(Path("out"), Path("data"), DemoBudget()).to_dict()
print(json.dumps({"lram": lram.__file__, "recipe": str(recipe_path()), "optim": cfg["optim"], "train": cfg["train"],
                  "model": cfg["model"], "data": {k: v for k, v in cfg["data"].items() if k != "domains"}}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the project (the build leaves build/ and egg-info in its source)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "project"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src" / "lram", src / "src" / "lram", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
           str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (whl,) = out.glob("lram-*.whl")
    return whl


def test_wheel_ships_the_demo_recipe(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        assert RECIPE in z.namelist()
        assert z.read(RECIPE) == (ROOT / "configs" / "cpu_tiny.yaml").read_bytes()
        z.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["lram"]).is_relative_to(tmp_path / "site")  # the unpacked wheel, not the repo's source tree
    assert Path(got["recipe"]).is_relative_to(tmp_path / "site")

    from lram.training.config import load_config

    repo = json.loads(json.dumps(load_config(ROOT / "configs" / "cpu_tiny.yaml").to_dict()))  # tuples as lists
    assert got["optim"]["lr"] == repo["optim"]["lr"] == 1e-3
    assert got["optim"]["warmup_steps"] == repo["optim"]["warmup_steps"] == 50
    assert got["train"]["steps"] == repo["train"]["steps"]
    for section in ("optim", "model"):
        assert got[section] == repo[section], section
    assert got["data"] == {k: v for k, v in repo["data"].items() if k != "domains"}

    # a wheel without its package data fails loudly instead of training with other defaults
    (tmp_path / "site" / RECIPE).unlink()
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "FileNotFoundError" in done.stderr and "cpu_tiny.yaml is missing" in done.stderr
