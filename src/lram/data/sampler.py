"""The multi-domain window sampler: the paper's batching semantics (spec 1.4, 4.3) as a stateless stream.

* Every micro-batch comes from **one domain**; domains are visited round-robin (micro-batch k uses domain
  k mod D), so with one accumulation step per domain every optimizer update sees each domain once.
  ``domain_order="weighted"`` instead draws the domain of each micro-batch with ``domain_weights``.
* Within a domain, trajectories are drawn with probability proportional to their length (the paper; i.e.
  uniform over transitions), or uniformly per task then by length (``within="task"``), or uniformly over
  episodes (``within="episode"``), or with explicit per-task weights (``task_weights``).
* A window of C timesteps ends uniformly in the episode: the last timestep e ~ U{0..L-1} (the paper's code
  draws e from U{1..L-1}, so an episode's final step can never end a window; lram includes it), starts at
  max(e - C + 1, 0) and is **left-padded** to C with ``timestep_mask`` False.
* Vector states are zero-padded to the batch's widest task (the model pads to 204); continuous actions
  are zero-padded to ``max_act_dim`` with per-row ``action_dims``; rewards and returns are raw (the model
  divides by the domain's ``reward_scale``).
* In-context mode (Dark-Room style learning histories): a window spans consecutive episodes of one task
  in stored order; ``first_step`` marks episode starts inside the window.
* 2.5 % of each task's trajectories are held out for validation (a fixed, seeded, length-weighted choice).

Stateless and resumable: the global micro-batch k is drawn from ``numpy.random.default_rng([seed, k])`` and
rank r of W reads rows [r B, (r + 1) B) of it, so a stream restarted at step k continues exactly, DataLoader
workers take every W-th step, and W ranks together see what one process with a W-times larger batch sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lram.data.episode import DataError
from lram.data.normalization import standardize
from lram.models.policy import TrajectoryBatch


@dataclass
class DomainData:
    """The tasks of one domain and what the model needs to know about them."""

    name: str
    tasks: Sequence  # TaskData objects (lram.data.storage)
    reward_scale: float = 1.0
    num_actions: int | None = None  # valid discrete actions (None: continuous domain)
    in_context: bool = False  # windows span consecutive episodes (learning histories)
    # condition on the return-to-go (the paper); False: the domain's windows carry a return-to-go of 0, and
    # so does acting (in-context RL without a target return, as Algorithm Distillation)
    return_condition: bool = True
    # vector states are standardised by these (float32 [d]; None: raw states, the paper)
    state_mean: np.ndarray | None = None
    state_std: np.ndarray | None = None

    @property
    def discrete(self) -> bool:
        return bool(self.tasks[0].discrete)


@dataclass
class SamplerConfig:
    context: int = 50
    batch_size: int = 32
    seed: int = 0
    domain_order: str = "round_robin"  # or "weighted"
    domain_weights: Mapping[str, float] | None = None
    within: str = "length"  # "length" (paper), "task", "episode"
    task_weights: Mapping[str, float] | None = None
    valid_fraction: float = 0.025
    split_seed: int = 1
    max_act_dim: int = 8
    pad_states_to: int | None = None  # None: the widest task of the batch


def split_episodes(lengths: np.ndarray, fraction: float, seed: int, task: str) -> np.ndarray:
    """Boolean mask of validation episodes: round(fraction * E) episodes, chosen with probability
    proportional to length by a generator seeded with (seed, task name); at least one episode stays in
    training."""
    E = len(lengths)
    n_valid = min(int(round(fraction * E)), E - 1)
    mask = np.zeros(E, dtype=bool)
    if n_valid <= 0:
        return mask
    rng = np.random.default_rng([seed, *task.encode()])
    p = lengths / lengths.sum()
    mask[rng.choice(E, size=n_valid, replace=False, p=p)] = True
    return mask


@dataclass
class _DomainIndex:
    data: DomainData
    task_of: np.ndarray  # flat episode -> task index
    episode_of: np.ndarray  # flat episode -> episode index within its task
    probs: np.ndarray  # sampling probability of each flat episode
    lengths: np.ndarray
    transitions: int = 0
    widths: list[int] = field(default_factory=list)


class WindowSampler:
    """Draws micro-batches of C-step windows (a :class:`TrajectoryBatch` each) from several domains."""

    def __init__(self, domains: Sequence[DomainData], config: SamplerConfig, split: str = "train",
                 rank: int = 0, world_size: int = 1):
        if split not in ("train", "valid"):
            raise ValueError(f"split: expected 'train' or 'valid', got {split!r}")
        if not domains:
            raise ValueError("domains: expected at least one domain")
        if config.within not in ("length", "task", "episode"):
            raise ValueError(f"within: expected 'length', 'task' or 'episode', got {config.within!r}")
        if config.domain_order not in ("round_robin", "weighted"):
            raise ValueError(f"domain_order: expected 'round_robin' or 'weighted', got {config.domain_order!r}")
        self.config, self.split, self.rank, self.world_size = config, split, rank, world_size
        indexed = [self._index(d) for d in domains]
        self.skipped = [d.name for d, i in zip(domains, indexed) if i is None]  # no validation episodes
        self.domains = [i for i in indexed if i is not None]
        if not self.domains:
            raise ValueError(f"no domain has episodes in the {split} split (domains: {[d.name for d in domains]})")
        names = [d.data.name for d in self.domains]
        if config.domain_weights is not None:
            unknown = sorted(set(config.domain_weights) - set(names))
            if unknown:
                raise ValueError(f"domain_weights: unknown domain(s) {unknown}; domains are {names}")
            w = np.array([float(config.domain_weights.get(n, 0.0)) for n in names])
        else:
            w = np.array([d.transitions for d in self.domains], dtype=float)
        self.domain_probs = w / w.sum()

    # ------------------------------------------------------------------ index
    def _index(self, d: DomainData) -> _DomainIndex | None:
        cfg = self.config
        if not d.tasks:
            raise ValueError(f"domain {d.name!r}: no tasks")
        kinds = {bool(t.discrete) for t in d.tasks}
        if len(kinds) > 1:
            raise DataError(d.name, "actions", "a domain mixes discrete and continuous tasks")
        task_of, ep_of, probs, lengths, widths = [], [], [], [], []
        for ti, t in enumerate(d.tasks):
            lens = np.asarray(t.lengths, dtype=np.int64)
            valid = split_episodes(lens, cfg.valid_fraction, cfg.split_seed, t.task)
            keep = np.nonzero(valid if self.split == "valid" else ~valid)[0]
            if len(keep) == 0:
                continue
            L = lens[keep].astype(float)
            if cfg.within == "length":
                p = L
            elif cfg.within == "episode":
                p = np.ones_like(L)
            else:  # "task": each task gets equal mass, spread by length
                p = L / L.sum()
            if cfg.task_weights is not None:
                p = p * float(cfg.task_weights.get(t.task, 1.0))
            task_of.append(np.full(len(keep), ti))
            ep_of.append(keep)
            probs.append(p)
            lengths.append(lens[keep])
            widths.append(int(t.obs_shape[0]) if len(t.obs_shape) == 1 else 0)
        if not task_of:
            if self.split == "valid":
                return None  # too few episodes to hold any out
            raise ValueError(f"domain {d.name!r}: no episodes in the {self.split} split")
        probs_all = np.concatenate(probs)
        return _DomainIndex(
            data=d, task_of=np.concatenate(task_of), episode_of=np.concatenate(ep_of),
            probs=probs_all / probs_all.sum(), lengths=np.concatenate(lengths),
            transitions=int(np.concatenate(lengths).sum()), widths=widths,
        )

    # ------------------------------------------------------------------ sampling
    def domain_at(self, step: int) -> int:
        """The domain index of micro-batch ``step`` (the same on every rank)."""
        if self.config.domain_order == "round_robin":
            return step % len(self.domains)
        rng = np.random.default_rng([self.config.seed, 2**31 - 1, step])
        return int(rng.choice(len(self.domains), p=self.domain_probs))

    def batch(self, step: int) -> tuple[str, TrajectoryBatch]:
        """Micro-batch number ``step`` of this rank: (domain name, batch).  The global batch (batch_size x
        world_size windows) is drawn from a generator seeded by (seed, step) and every rank reads its own
        slice of it, so N ranks see exactly the windows that one process with an N-times larger batch sees."""
        cfg = self.config
        dom = self.domains[self.domain_at(step)]
        rng = np.random.default_rng([cfg.seed, step])
        total = cfg.batch_size * self.world_size
        picks = rng.choice(len(dom.probs), size=total, p=dom.probs)
        where = rng.random(total)  # where each window ends inside its episode, uniform
        mine = slice(self.rank * cfg.batch_size, (self.rank + 1) * cfg.batch_size)
        windows = [self._window(dom, int(i), float(u)) for i, u in zip(picks[mine], where[mine])]
        return dom.data.name, self._collate(dom, windows)

    def __iter__(self) -> Iterator[tuple[str, TrajectoryBatch]]:
        return self.stream()

    def stream(self, start_step: int = 0, step_every: int = 1, offset: int = 0):
        """Micro-batches start_step + offset, + step_every, ... (for DataLoader workers: offset = worker id,
        step_every = number of workers)."""
        step = start_step + offset
        while True:
            yield self.batch(step)
            step += step_every

    def _window(self, dom: _DomainIndex, flat: int, u: float) -> dict:
        C = self.config.context
        task = dom.data.tasks[dom.task_of[flat]]
        ep = int(dom.episode_of[flat])
        if dom.data.in_context:
            return self._window_in_context(task, ep, u)
        L = int(dom.lengths[flat])
        end = min(int(u * L), L - 1) + 1  # exclusive end: the window's last step is uniform in 0..L-1
        start = max(end - C, 0)
        arrays = _checked(task, ep, task.read(ep, start, end))
        prev_reward = float(task.read(ep, start - 1, start, ("rewards",))["rewards"][0]) if start > 0 else 0.0
        first = np.zeros(end - start, dtype=bool)
        first[0] = start == 0
        return {**arrays, "prev_reward": prev_reward, "first_step": first, "source": task.task}

    def _window_in_context(self, task, ep: int, u: float) -> dict:
        """C steps ending uniformly inside episode ``ep``, preceded by the end of earlier episodes of the history."""
        L = int(task.lengths[ep])
        stop = min(int(u * L), L - 1) + 1
        parts, need, e = [], self.config.context, ep  # parts: (episode, begin, stop), newest first
        while need > 0 and e >= 0:
            begin = max(stop - need, 0)
            parts.append((e, begin, stop))
            need -= stop - begin
            e -= 1
            stop = int(task.lengths[e]) if e >= 0 else 0
        parts.reverse()
        reads = [_checked(task, e, task.read(e, b, s)) for e, b, s in parts]
        arrays = {k: np.concatenate([r[k] for r in reads]) for k in reads[0]}
        first = np.concatenate([np.arange(s - b) == 0 if b == 0 else np.zeros(s - b, bool) for _, b, s in parts])
        e0, b0, _ = parts[0]
        prev_reward = float(task.read(e0, b0 - 1, b0, ("rewards",))["rewards"][0]) if b0 > 0 else 0.0
        return {**arrays, "prev_reward": prev_reward, "first_step": first, "source": task.task}

    def _collate(self, dom: _DomainIndex, windows: list[dict]) -> TrajectoryBatch:
        cfg = self.config
        B, C = len(windows), cfg.context
        discrete = dom.data.discrete
        s0 = windows[0]["states"]
        image = s0.ndim == 4
        width = 0 if image else (cfg.pad_states_to or max(w["states"].shape[1] for w in windows))
        states = np.zeros((B, C, *s0.shape[1:]), dtype=np.uint8) if image else np.zeros((B, C, width), np.float32)
        rtg = np.zeros((B, C), np.float32)
        rewards = np.zeros((B, C), np.float32)
        mask = np.zeros((B, C), bool)
        first = np.zeros((B, C), bool)
        if discrete:
            actions = np.zeros((B, C), np.int64)
            dims = np.ones(B, np.int64)
        else:
            actions = np.zeros((B, C, cfg.max_act_dim), np.float32)
            dims = np.zeros(B, np.int64)
        prev_r = np.zeros(B, np.float32)
        for b, w in enumerate(windows):
            n = len(w["rewards"])
            sl = slice(C - n, C)  # left padding
            s = w["states"]
            if image:
                states[b, sl] = s
            elif dom.data.state_mean is not None:
                states[b, sl, : s.shape[1]] = standardize(s, dom.data.state_mean, dom.data.state_std)
            else:
                states[b, sl, : s.shape[1]] = s
            if dom.data.return_condition:
                rtg[b, sl] = w["returns_to_go"]
            rewards[b, sl] = w["rewards"]
            mask[b, sl] = True
            first[b, sl] = w["first_step"]
            a = np.asarray(w["actions"])
            if discrete:
                actions[b, sl] = a.reshape(n)
            else:
                if a.shape[1] > cfg.max_act_dim:
                    raise DataError(w["source"], "actions", f"{a.shape[1]} dims, more than max_act_dim={cfg.max_act_dim}")
                actions[b, sl, : a.shape[1]] = a
                dims[b] = a.shape[1]
            prev_r[b] = w["prev_reward"]
        return TrajectoryBatch(
            states=torch.from_numpy(states), returns_to_go=torch.from_numpy(rtg), rewards=torch.from_numpy(rewards),
            actions=torch.from_numpy(actions), timestep_mask=torch.from_numpy(mask), discrete=discrete,
            action_dims=None if discrete else torch.from_numpy(dims),
            num_actions=dom.data.num_actions, reward_scale=float(dom.data.reward_scale),
            prev_reward=torch.from_numpy(prev_r), first_step=torch.from_numpy(first),
        )


def _checked(task, ep: int, arrays: dict) -> dict:
    """Refuse to train on a broken window: non-finite values raise a DataError naming the episode and field."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            stem = task.stems[ep] if hasattr(task, "stems") else ep
            raise DataError(f"{getattr(task, 'path', task.task)} episode {stem}", name,
                            "contains NaN/inf; run `lram data check` on the dataset")
    return arrays


class SamplerDataset(torch.utils.data.IterableDataset):
    """A :class:`WindowSampler` as an infinite DataLoader dataset (batch_size=None in the DataLoader).
    Worker w of W yields micro-batches w, w + W, ...; the loader interleaves them back in step order."""

    def __init__(self, sampler: WindowSampler, start_step: int = 0):
        self.sampler, self.start_step = sampler, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.sampler.stream(self.start_step, step_every=W, offset=w)
