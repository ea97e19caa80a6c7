"""The training loop, readable top to bottom: data -> model -> optimizer -> loop (accumulation, autocast,
clipping, schedule) -> validation -> checkpoints.  One process, or many under torchrun (DDP).

The paper's recipe (spec 4.5): AdamW, weight decay on weight matrices only, linear warm-up then cosine decay
to ``min_lr``, one micro-batch per domain per optimizer step (round-robin), global-norm clipping, bf16
autocast on GPU.  The schedule is stepped per optimizer step (the paper's code steps it per micro-step;
with accumulation = number of domains its 200K micro-steps are 33.3K optimizer steps).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lram.data.domains import domain_setting
from lram.data.sampler import DomainData, SamplerConfig, SamplerDataset, WindowSampler
from lram.models.domain import DomainSpec
from lram.models.policy import LRAMPolicy, TrajectoryBatch
from lram.training.checkpoint import resumable_checkpoint, save_checkpoint
from lram.training.config import Config, ConfigError, config_from_dict
from lram.utils.checks import validation
from lram.utils.io import write_json_atomic


# ----------------------------------------------------------------------------- pieces
def lr_at(step: int, cfg) -> float:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine from ``lr`` to ``min_lr`` at ``steps``."""
    o, total = cfg.optim, cfg.train.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices / conv kernels only; none on biases, norms, embeddings, gate biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_matrix = p.dim() >= 2 and not isinstance(module, (nn.Embedding, nn.LayerNorm))
            (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(groups: list[dict], lr: float, device: torch.device, betas=(0.9, 0.999), eps: float = 1e-8,
                   sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW; its fused implementation (one pass over all parameters per step, on CPU and CUDA) unless the
    parameters are sharded (FSDP), where the multi-tensor one is used."""
    fused = not sharded and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)


def open_domains(cfg: Config) -> list[DomainData]:
    from lram.data.storage import open_dataset

    domains = []
    for d in cfg.data.domains:
        tasks = open_dataset(d.path)
        if d.tasks:
            missing = sorted(set(d.tasks) - set(tasks))
            if missing:
                raise ValueError(f"data.domains[{d.name}].tasks: {missing} not found under {d.path}")
            tasks = {k: tasks[k] for k in d.tasks}
        if not tasks:
            raise ValueError(f"data.domains[{d.name}].path: no task folders under {d.path}")
        ordered = [tasks[k] for k in sorted(tasks)]
        mean = std = None
        if cfg.data.normalize_states and len(ordered[0].obs_shape) == 1:
            from lram.data.normalization import state_statistics

            mean, std = state_statistics(ordered)
        domains.append(DomainData(
            name=d.name, tasks=ordered, state_mean=mean, state_std=std,
            reward_scale=float(domain_setting(d.name, "reward_scale", d.reward_scale, 1.0)),
            num_actions=domain_setting(d.name, "num_actions", d.num_actions),
            in_context=bool(domain_setting(d.name, "in_context", d.in_context, False)),
            return_condition=bool(domain_setting(d.name, "return_condition", d.return_condition, True)),
        ))
    return domains


def domain_specs(domains: list[DomainData]) -> list[DomainSpec]:
    """What a checkpoint records about each domain (everything needed to act), built once from the data."""
    return [DomainSpec.from_data(d) for d in domains]


# ----------------------------------------------------------------------------- starting from a checkpoint
# model-config fields that change how a policy decodes or what its loss targets are, not its weights
WEIGHT_FREE_FIELDS = ("bin_decode", "continuous_decode", "label_sigma_bins")


def initial_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """The checkpoint folder ``train.init_from`` names (a run's newest, or the folder itself) and its
    verified metadata; ConfigError when there is none or it is damaged."""
    from lram.models.persistence import CheckpointError, resolve_checkpoint, verify_checkpoint

    try:
        folder = resolve_checkpoint(path)
        return folder, verify_checkpoint(folder)
    except CheckpointError as e:
        raise ConfigError(f"train.init_from: {e}") from None


def adopt_state_statistics(domains: list[DomainData], meta: dict) -> None:
    """Vector domains the checkpoint was trained on keep its input convention (its state standardisation, or
    raw states), whatever ``data.normalize_states`` says: the inputs its encoder learned."""
    from lram.models.domain import domain_specs as specs_by_name

    known = specs_by_name(meta.get("domains") or [])
    for d in domains:
        spec = known.get(d.name)
        if spec is None or len(d.tasks[0].obs_shape) != 1:
            continue
        if spec.state_mean is None:
            d.state_mean = d.state_std = None
            continue
        width = max(int(t.obs_shape[0]) for t in d.tasks)
        if len(spec.state_mean) < width:
            raise ConfigError(f"train.init_from: domain {d.name!r} has {width}-d states here, but the checkpoint's "
                              f"standardisation covers {len(spec.state_mean)}")
        d.state_mean = np.asarray(spec.state_mean, dtype=np.float32)
        d.state_std = np.asarray(spec.state_std, dtype=np.float32)


def load_initial_weights(model: LRAMPolicy, folder: Path, meta: dict) -> None:
    """Copy a checkpoint's weights into ``model``; ConfigError naming the model fields that differ when the
    checkpoint's architecture is not the model's."""
    from safetensors.torch import load_file

    from lram.models.policy import LRAMConfig

    theirs, ours = LRAMConfig.from_dict(meta["config"]).to_dict(), model.config.to_dict()
    differ = [k for k in ours if k not in WEIGHT_FREE_FIELDS and theirs[k] != ours[k]]
    if differ:
        raise ConfigError(f"train.init_from: {folder} holds another architecture: "
                          + "; ".join(f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in differ)
                          + " (set model.* to the checkpoint's: model.size, model.backbone, ...)")
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors"), device="cpu"))
    except RuntimeError as e:
        raise ConfigError(f"train.init_from: the weights in {folder} do not fit the model: {e}") from None


class MetricsLog:
    """Metrics to JSONL and CSV (and TensorBoard / Weights & Biases when enabled and installed)."""

    def __init__(self, run_dir: Path, cfg: Config, enabled: bool):
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.tb = self.wandb = None
        if not enabled:
            return
        if cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None
        if cfg.logging.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.logging.wandb_project, config=cfg.to_dict(), dir=str(run_dir))
            except ImportError as e:
                raise ImportError("logging.wandb=true needs the wandb package: pip install wandb") from e

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in metrics.items():
                w.writerow([step, k, v])
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Builds everything from a :class:`Config` and runs (or resumes) training."""

    def __init__(self, cfg: Config, resume: bool = False, hooks: list[Callable] | None = None):
        self.cfg = cfg
        self.hooks = hooks or []  # called as hook(trainer, step) after each eval (e.g. rollout evaluation)
        # --- processes and device
        if cfg.train.distributed not in ("auto", "ddp", "fsdp", "none"):
            raise ValueError(f"train.distributed: expected auto, ddp, fsdp or none, got {cfg.train.distributed!r}")
        self.distributed = cfg.train.distributed != "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        dev = cfg.train.device
        if dev == "auto":
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        if self.device.type == "cpu":  # keep freed activations in the heap: no page faults every step
            from lram.utils.memory import keep_freed_memory

            keep_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        prec = cfg.train.precision
        if prec == "auto":
            prec = "bf16" if self.device.type == "cuda" else "fp32"
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if prec == "bf16" else nullcontext())
        self.run_dir = Path(cfg.logging.run_dir)
        # --- data
        self.domains = open_domains(cfg)
        init = initial_checkpoint(cfg.train.init_from) if cfg.train.init_from else None
        if init is not None:
            adopt_state_statistics(self.domains, init[1])
        self.specs = domain_specs(self.domains)  # what checkpoints record and rollouts act by
        scfg = SamplerConfig(context=cfg.data.context, batch_size=cfg.data.batch_size, seed=cfg.train.seed,
                             domain_order=cfg.data.domain_order, domain_weights=cfg.data.domain_weights,
                             within=cfg.data.within, valid_fraction=cfg.data.valid_fraction,
                             max_act_dim=cfg.model.max_act_dim)
        self.sampler = WindowSampler(self.domains, scfg, "train", self.rank, self.world)
        self.valid_sampler = None
        if cfg.data.valid_fraction > 0:
            try:
                self.valid_sampler = WindowSampler(self.domains, scfg, "valid", self.rank, self.world)
            except ValueError:
                self.valid_sampler = None  # too little data to hold any trajectory out
        self.accum = cfg.optim.accumulation or len(self.sampler.domains)
        # --- model and optimizer (seeded identically on every rank)
        torch.manual_seed(cfg.train.seed)
        mcfg = cfg.model
        any_images = any(len(d.tasks[0].obs_shape) == 3 for d in self.domains)
        use_images = mcfg.use_images and any_images
        if init is not None and init[1]["config"].get("use_images") and not any_images:
            use_images = True  # the checkpoint's image encoder is kept (idle on vector-only data)
        self.model = LRAMPolicy(mcfg.build(use_images=use_images)).to(self.device)
        self.step = 0
        found = resumable_checkpoint(self.run_dir) if resume else None
        if resume and found is None and self.is_main:
            print(f"resume: no intact checkpoint in {self.run_dir}, starting from scratch")
        ckpt, trainer_state = found if found is not None else (None, None)
        if ckpt is not None:  # weights go in before sharding, as plain tensors
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(self.device)))
        elif init is not None:  # a new run from given weights (fine-tuning); resuming takes the run's own
            load_initial_weights(self.model, *init)
            if self.is_main:
                print(f"initialised from {init[0]} (step {init[1].get('step')}): weights only, fresh optimizer")
        self.fsdp = self.distributed and cfg.train.distributed == "fsdp"
        if self.fsdp:  # shard parameters, gradients and optimizer state: each block, then the rest
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for block in self.model.backbone.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)
        self.optimizer = make_optimizer(param_groups(self.model, cfg.optim.weight_decay), cfg.optim.lr, self.device,
                                        betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, sharded=self.fsdp)
        if ckpt is not None:
            self._restore(ckpt, trainer_state)
        self.ddp_model = self.model
        if self.distributed and not self.fsdp:
            kinds = {len(d.tasks[0].obs_shape) for d in self.domains}  # image and vector domains: encoders idle
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=len(kinds) > 1 or (use_images and not any_images))
        self.forward_model = torch.compile(self.ddp_model) if cfg.train.compile else self.ddp_model
        self.log = MetricsLog(self.run_dir, cfg, self.is_main)

    # ------------------------------------------------------------------ resume
    def _restore(self, ckpt: Path, state: dict) -> None:
        """Optimizer state, counters and RNG states of a checkpoint (the weights are already loaded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        if self.is_main:
            print(f"resumed from {ckpt} at step {self.step}")

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0).  Full, unsharded state: gathered from every rank under FSDP, so a
        checkpoint resumes with any number of processes and loads with ``lram.load``."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=opts) if self.fsdp else None  # collective
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=opts)  # collective under FSDP
        if not self.is_main:
            return None
        state = {"optimizer": optim, "step": self.step, "config": self.cfg.to_dict(),
                 "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                 "numpy_rng": np.random.get_state(), "world_size": self.world}
        return save_checkpoint(self.run_dir, self.step, self.model, state, self.specs,
                               self.cfg.train.keep_last, weights=weights)

    # ------------------------------------------------------------------ data
    def _batches(self, start_micro: int):
        """Micro-batches from ``start_micro`` on: directly, or through DataLoader workers."""
        if self.cfg.data.workers <= 0:
            return self.sampler.stream(start_micro)
        loader = torch.utils.data.DataLoader(SamplerDataset(self.sampler, start_micro), batch_size=None,
                                             num_workers=self.cfg.data.workers, persistent_workers=True,
                                             prefetch_factor=2)
        return iter(loader)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", cfg.to_dict())
        batches = self._batches(self.step * self.accum)
        from tqdm import tqdm

        stop = min(cfg.train.stop_after or cfg.train.steps, cfg.train.steps)
        bar = tqdm(total=stop, initial=self.step, desc="train", disable=not self.is_main)
        last = {}
        self.model.train()
        with validation("shapes"):  # checked once per batch shape, not every step's values
            while self.step < stop:
                t0 = time.perf_counter()
                lr = lr_at(self.step, cfg)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                losses, per_domain = [], {}
                for micro in range(self.accum):
                    domain, batch = next(batches)
                    batch = batch.to(self.device)
                    sync = self.distributed and not self.fsdp and micro < self.accum - 1
                    count = None
                    if self.distributed:  # normalise by the global token count: exact global mean
                        count = self.model.targets(batch)[1].sum().float()
                        dist.all_reduce(count)
                        count = count.clamp_min(1.0) / self.world
                    with (self.ddp_model.no_sync() if sync else nullcontext()), self.autocast:
                        out = self.forward_model(batch)
                        loss, _ = self.model.loss(batch, out, count, metrics=False)
                    (loss / self.accum).backward()
                    value = loss.detach()
                    if self.distributed:
                        dist.all_reduce(value)
                        value /= self.world
                    losses.append(value.item())
                    per_domain[f"train/{domain}/loss"] = value.item()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                bar.update(1)
                last = {"train/loss": float(np.mean(losses)), "train/lr": lr, "train/grad_norm": float(grad_norm),
                        "train/step_time_s": time.perf_counter() - t0, **per_domain}
                if self.step % cfg.train.log_every == 0 or self.step == stop:
                    self.log.write(self.step, last)
                    bar.set_postfix(loss=f"{last['train/loss']:.3f}")
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    self.evaluate()
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
        bar.close()
        final = self.evaluate()
        self.save()
        self.log.close()
        return {**last, **final}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss, perplexity and action accuracy per domain on held-out trajectories; then hooks."""
        metrics = {}
        if self.valid_sampler is not None and self.cfg.train.eval_batches > 0:
            self.model.eval()
            n_dom = len(self.valid_sampler.domains)
            sums: dict[str, list] = {}
            for k in range(self.cfg.train.eval_batches * n_dom):
                domain, batch = self.valid_sampler.batch(k)
                batch = batch.to(self.device)
                with self.autocast:
                    _, m = self.model.loss(batch)
                s = sums.setdefault(domain, [0.0, 0.0, 0])
                s[0] += m["loss"] * m["tokens"]
                s[1] += m["accuracy"] * m["tokens"]
                s[2] += m["tokens"]
            if self.distributed:  # every rank evaluated its slice of each batch: add them up
                names = sorted(sums)
                t = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=self.device)
                dist.all_reduce(t)
                sums = {k: t[i].tolist() for i, k in enumerate(names)}
            for domain, (l, a, n) in sums.items():
                loss = l / max(n, 1)
                metrics.update({f"valid/{domain}/loss": loss, f"valid/{domain}/perplexity": math.exp(min(loss, 50)),
                                f"valid/{domain}/accuracy": a / max(n, 1)})
            self.model.train()
            self.log.write(self.step, metrics)
        rollouts = self.rollouts()
        if rollouts:
            self.log.write(self.step, rollouts)
            metrics.update(rollouts)
        for hook in self.hooks:
            hook(self, self.step)
        return metrics


    @torch.no_grad()
    def rollouts(self) -> dict:
        """Online evaluation (``train.rollout_episodes`` per task; tasks split over ranks, results gathered):
        ``rollout/<domain>/<task>/return`` and ``success``, and their means per domain."""
        t = self.cfg.train
        if t.rollout_episodes <= 0:
            return {}
        if self.fsdp:  # sharded weights cannot act locally
            if self.is_main and not getattr(self, "_warned_fsdp_rollouts", False):
                print("train.rollout_episodes: skipped under FSDP; evaluate checkpoints with `lram eval RUN`")
                self._warned_fsdp_rollouts = True
            return {}
        from lram.evaluation import ENV_BUILDERS
        from lram.evaluation.evaluate import evaluate_one

        jobs = [(spec, task) for spec in self.specs
                if spec.name in ENV_BUILDERS and (not t.rollout_domains or spec.name in t.rollout_domains)
                for task in spec.tasks]
        local: dict[str, dict] = {}
        self.model.eval()
        for spec, task in jobs[self.rank :: self.world]:
            # as `lram eval` does it (in-context domains: consecutive episodes on one recurrent state)
            row = evaluate_one(self.model, spec, task, episodes=t.rollout_episodes,
                               num_envs=t.rollout_envs, seed=t.seed, max_steps=t.rollout_max_steps or None,
                               random_baseline=False)
            local.setdefault(spec.name, {})[task] = {k: row[k] for k in ("return_mean", "success_rate")}
        self.model.train()
        if self.distributed:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, local)
            local = {}
            for part in gathered:
                for d, tasks in part.items():
                    local.setdefault(d, {}).update(tasks)
        metrics = {}
        for d, tasks in sorted(local.items()):
            for task, s in sorted(tasks.items()):
                metrics[f"rollout/{d}/{task}/return"] = s["return_mean"]
                if s["success_rate"] is not None:
                    metrics[f"rollout/{d}/{task}/success"] = s["success_rate"]
            metrics[f"rollout/{d}/return_mean"] = float(np.mean([s["return_mean"] for s in tasks.values()]))
            succ = [s["success_rate"] for s in tasks.values() if s["success_rate"] is not None]
            if succ:
                metrics[f"rollout/{d}/success_rate"] = float(np.mean(succ))
        return metrics


def train(cfg: Config, resume: bool = False) -> dict:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.train()
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (from RUN_DIR/config.json), with optional overrides."""
    from lram.training.config import apply_overrides

    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json (is this an lram run folder?)")
    return config_from_dict(apply_overrides(json.loads(path.read_text()), overrides or []))


__all__ = ["Trainer", "TrajectoryBatch", "lr_at", "make_optimizer", "param_groups", "resume_config", "train"]
