"""Checkpoints: a folder per save, written atomically, that both resumes training and loads a ready policy.

    RUN_DIR/checkpoints/step-00000100/
        model.safetensors   the policy's weights
        policy.json         LRAMConfig + the domain registry (reward scales, action layouts, tokenizer)
        trainer.pt          optimizer, step counters, RNG states, the training config (to resume exactly)
    RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, so a crash mid-write
leaves the previous checkpoint (and ``latest``) intact; the oldest folders beyond ``keep_last`` are removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lram.models.policy import LRAMConfig, LRAMPolicy
from lram.utils.io import atomic_path

FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def save_checkpoint(run_dir: str | Path, step: int, model: LRAMPolicy, trainer_state: dict,
                    domains: list[dict], keep_last: int = 3, weights: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune old ones; returns its folder."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final, tmp = root / name, root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = model.state_dict() if weights is None else weights  # `weights`: a gathered (FSDP) full state
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"lram_format": str(FORMAT_VERSION)})
    (tmp / "policy.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "config": model.config.to_dict(), "domains": domains, "step": step}, indent=2))
    torch.save(trainer_state, tmp / "trainer.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # a re-run of the same step: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    with atomic_path(root / "latest") as t:
        t.write_text(name + "\n")
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run folder (or the folder itself if it is one)."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    root = path / "checkpoints"
    pointer = root / "latest"
    if pointer.exists():
        cand = root / pointer.read_text().strip()
        if (cand / "model.safetensors").exists():
            return cand
    done = sorted(p for p in root.glob("step-*") if (p / "model.safetensors").exists()) if root.exists() else []
    return done[-1] if done else None


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[LRAMPolicy, dict]:
    """A ready policy (eval mode) and its domain registry from a checkpoint or run folder; no training config
    needed."""
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no checkpoint found (expected model.safetensors or checkpoints/latest)")
    meta_path = ckpt / "policy.json"
    if not meta_path.exists():
        raise ValueError(f"{ckpt}: missing policy.json (not an lram checkpoint?)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: checkpoint format {meta['format']} is newer than this lram ({FORMAT_VERSION})")
    model = LRAMPolicy(LRAMConfig.from_dict(meta["config"]))
    state = load_file(str(ckpt / "model.safetensors"), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt}/model.safetensors: weights do not fit the config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.to(device).eval(), {"domains": meta.get("domains", []), "step": meta.get("step"), "path": str(ckpt)}


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
