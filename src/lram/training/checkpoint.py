"""Training checkpoints: a policy folder (:mod:`lram.models.persistence`) plus the trainer's own state.

    RUN_DIR/checkpoints/step-00000100/
        model.safetensors   the policy's weights            } written by the model's persistence,
        policy.json         config, domain specs, checksum  } loadable with LRAMPolicy.from_pretrained
        trainer.pt          optimizer, step counters, RNG states, the training config (to resume exactly)
    RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, so a crash mid-write
leaves the previous checkpoint (and ``latest``) intact; the oldest folders beyond ``keep_last`` are removed.
Resuming takes the newest checkpoint that verifies (weights checksum, readable trainer state) and warns
about each newer one it skips.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from lram.models.persistence import (
    CheckpointError,
    checkpoint_folders,
    verify_checkpoint,
    write_folder_atomically,
    write_pretrained,
)
from lram.utils.io import atomic_path

TRAINER_FILE = "trainer.pt"


def save_checkpoint(run_dir: str | Path, step: int, model, trainer_state: dict, domains: list, keep_last: int = 3,
                    weights: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune old ones; returns its folder.  ``domains``: the
    :class:`lram.models.domain.DomainSpec` s (or their dicts); ``weights``: a gathered (FSDP) full state."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:08d}"

    def fill(tmp: Path) -> None:
        write_pretrained(tmp, model, domains, step=step, weights=weights)
        torch.save(trainer_state, tmp / TRAINER_FILE)

    final = write_folder_atomically(root / name, fill)  # a re-run of the same step replaces it
    with atomic_path(root / "latest") as t:
        t.write_text(name + "\n")
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: Path) -> dict:
    path = Path(ckpt) / TRAINER_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a policy folder, not a training checkpoint?)") from None
    except Exception as e:  # truncated or corrupt pickle / zip
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def resumable_checkpoint(run_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that verifies, with its trainer state; warns about each newer one that
    does not (truncated or corrupt) and is skipped.  None when the run has no checkpoint."""
    for folder in checkpoint_folders(run_dir):
        try:
            verify_checkpoint(folder)
            return folder, load_trainer_state(folder)
        except CheckpointError as e:
            warnings.warn(f"resume: skipping a damaged checkpoint: {e}", stacklevel=2)
    return None
