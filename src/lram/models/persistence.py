"""A policy's own files: weights, config and domain specs in one folder, verified when loaded.

    FOLDER/model.safetensors   the weights
    FOLDER/policy.json         {"format", "config": LRAMConfig, "domains": [DomainSpec], "step",
                                "weights": {"file", "bytes", "sha256"}}

``save_pretrained`` writes such a folder atomically; ``load_pretrained`` reads one (or the newest
checkpoint of a run folder, ``RUN/checkpoints/latest``) and checks the weights against the size and SHA-256
recorded beside them, so a truncated or corrupt file is reported as a :class:`CheckpointError` naming the
file and what is wrong.  Training checkpoints are such folders plus the trainer's own ``trainer.pt``
(:mod:`lram.training.checkpoint`).  Folders of format 1 (no checksum, untyped domain registry) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from lram.models.domain import DomainSpec, domain_specs

FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
META_FILE = "policy.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or from a newer lram."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def write_pretrained(folder: Path, policy, domains: Iterable[DomainSpec | Mapping], *, step: int | None = None,
                     weights: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the weights and ``policy.json`` into an existing ``folder`` (not atomic: see save_pretrained).
    ``weights``: a full state dict gathered elsewhere (FSDP); default the policy's own."""
    from safetensors.torch import save_file

    folder = Path(folder)
    weights = policy.state_dict() if weights is None else weights
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    path = folder / WEIGHTS_FILE
    save_file(tensors, str(path), metadata={"lram_format": str(FORMAT_VERSION)})
    specs = [d if isinstance(d, DomainSpec) else DomainSpec.from_dict(d) for d in domains]
    meta = {"format": FORMAT_VERSION, "config": policy.config.to_dict(), "domains": [d.to_dict() for d in specs],
            "step": step, "weights": {"file": WEIGHTS_FILE, "bytes": path.stat().st_size, "sha256": file_sha256(path)}}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def write_folder_atomically(folder: Path, fill) -> Path:
    """``fill(tmp)`` writes the files of ``folder`` into a temporary sibling, which is synced and renamed to
    ``folder`` (replacing it) once complete: a crash mid-write leaves any earlier ``folder`` intact."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fill(tmp)
    sync_files(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    return folder


def save_pretrained(folder: str | Path, policy, domains: Iterable[DomainSpec | Mapping] = (), *,
                    step: int | None = None) -> Path:
    """Write a loadable policy folder atomically (under a temporary name, renamed when complete)."""
    return write_folder_atomically(Path(folder), lambda tmp: write_pretrained(tmp, policy, domains, step=step))


def sync_files(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


# ----------------------------------------------------------------------------- finding and checking
def checkpoint_folders(path: str | Path) -> list[Path]:
    """Candidate checkpoint folders of ``path``, newest first: the folder itself if it holds weights, else the
    run's ``checkpoints/latest`` and then every ``checkpoints/step-*`` folder."""
    path = Path(path)
    if (path / WEIGHTS_FILE).exists():
        return [path]
    root = path / "checkpoints"
    if not root.exists():
        return []
    found = sorted((p for p in root.glob("step-*") if (p / WEIGHTS_FILE).exists()), reverse=True)
    pointer = root / "latest"
    if pointer.exists():
        latest = root / pointer.read_text().strip()
        if latest in found:
            found.remove(latest)
            found.insert(0, latest)
    return found


def read_metadata(folder: Path) -> dict:
    """``policy.json`` of a checkpoint folder, checked (CheckpointError naming the file otherwise)."""
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path}: missing (not an lram checkpoint?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{meta_path}: no 'config' entry (not an lram checkpoint?)")
    if int(meta.get("format", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint format {meta['format']} is newer than this lram ({FORMAT_VERSION})")
    return meta


def verify_weights(folder: Path, meta: dict) -> None:
    """CheckpointError when the weights file is missing or differs from the size and SHA-256 recorded for it."""
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    record = meta.get("weights")
    if not record:  # format 1: no checksum; the safetensors header is still checked when loading
        return
    size = path.stat().st_size
    if size != int(record["bytes"]):
        raise CheckpointError(f"{path}: {size} bytes, but {record['bytes']} were written (truncated or replaced)")
    if file_sha256(path) != record["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 differs from the one recorded in {META_FILE} (corrupt file)")


def verify_checkpoint(folder: str | Path) -> dict:
    """The checked metadata of an intact checkpoint folder (CheckpointError otherwise)."""
    folder = Path(folder)
    meta = read_metadata(folder)
    verify_weights(folder, meta)
    return meta


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or a run folder's newest checkpoint."""
    found = checkpoint_folders(path)
    if not found:
        raise CheckpointError(f"{path}: no checkpoint found (expected {WEIGHTS_FILE} or checkpoints/latest)")
    return found[0]


# ----------------------------------------------------------------------------- loading
def load_pretrained(path: str | Path, device: str | torch.device = "cpu"):
    """A ready policy (eval mode) from a policy folder or a run folder's newest checkpoint.  The policy carries
    ``policy.domains`` (name -> :class:`DomainSpec`) and ``policy.checkpoint`` ({"path", "step"})."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lram.models.policy import LRAMConfig, LRAMPolicy

    folder = resolve_checkpoint(path)
    meta = verify_checkpoint(folder)
    try:
        config = LRAMConfig.from_dict(meta["config"])
        domains = domain_specs(meta.get("domains") or [])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / META_FILE}: {e}") from None
    model = LRAMPolicy(config)
    weights_path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights_path}: weights do not fit the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    model = model.to(device).eval()
    model.domains = domains
    model.checkpoint = {"path": str(folder), "step": meta.get("step")}
    return model
