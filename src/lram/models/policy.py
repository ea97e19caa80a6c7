"""The LRAM policy: embeds (reward, state, return-to-go) per timestep, runs a backbone, predicts actions.

Token layout (a deliberate choice; see docs/design.md).  Each timestep t contributes one *group* of
tokens, in this order::

    [a_{t-1} x 8]   (only with action_condition; ids 0..273, pad 274)
    r_{t-1}         (the reward of the previous step; 0 at an episode start; only with reward_condition)
    s_t             (state: IMPALA CNN for 3x64x64 uint8 images, Linear for vectors zero-padded to 204)
    R_t             (return-to-go; only with rtg_condition)

and the action a_t is read from the backbone output at the group's **last** token.  This is the
paper's sequence ``s_1 R_1 r_1 s_2 R_2 r_2 ...`` with the reward token of each step moved to the front of
the next group (plus a zero reward token before the first state): the action still sees s_<=t, R_<=t and
r_<t.  The gain is at inference: a rollout step knows exactly (r_{t-1}, s_t, R_t), so every environment
step is **one** backbone ``step`` over one group, and the true previous reward enters the recurrent
state (the paper's code feeds a zero placeholder and never the reward; spec section 6).

Padding: training windows may be left- or right-padded (``timestep_mask``).  The model moves each row's
real timesteps to the front before the backbone and back afterwards, so a window that starts at an
episode start is processed from a fresh state, exactly as in a rollout (the paper's code runs its left
padding through the backbone as ordinary zero inputs, which recurrent inference never sees).

Rewards and returns-to-go are divided by the per-domain ``reward_scale`` before embedding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lram.data.normalization import standardize
from lram.models.backbone import Backbone
from lram.models.encoders import ImpalaEncoder
from lram.models.layers import Linear
from lram.models.presets import backbone_settings
from lram.models.registry import build_backbone
from lram.models.state import RecurrentState
from lram.models.tokenizer import ActionTokenizer
from lram.utils.checks import check_choice, check_positive_int, check_range, check_tensor, checks_enabled


@dataclass
class LRAMConfig:
    """Everything needed to rebuild an LRAM policy (saved beside the weights)."""

    backbone: str = "xlstm"
    d_model: int = 512
    num_blocks: int = 8
    backbone_options: dict = field(default_factory=dict)
    state_dim: int = 204  # vector states are zero-padded to this size
    image_shape: tuple[int, int, int] = (3, 64, 64)
    use_images: bool = True  # build the IMPALA encoder (False for vector-only models)
    max_act_dim: int = 8
    num_discrete: int = 18
    num_bins: int = 256
    rtg_condition: bool = True
    reward_condition: bool = True
    action_condition: bool = False
    bin_decode: str = "center"  # "center" or "lower_edge" (the paper's code)
    # continuous actions from the predicted bin distribution: "argmax" (its mode; the paper) or "mean" (its
    # expectation over bin centres: far less noisy when the data's actions are noisy and the bins many)
    continuous_decode: str = "argmax"
    # training targets of continuous dims: 0 = the one-hot bin (the paper); s > 0 = a Gaussian of s bins
    # (standard deviation) around the action, integrated over each bin ("HL-Gauss": neighbouring bins share
    # what a sample teaches)
    label_sigma_bins: float = 0.0

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        check_positive_int("state_dim", self.state_dim)
        check_positive_int("max_act_dim", self.max_act_dim)
        check_choice("continuous_decode", self.continuous_decode, ("argmax", "mean"))
        if not self.label_sigma_bins >= 0:
            raise ValueError(f"label_sigma_bins: expected >= 0, got {self.label_sigma_bins}")

    @classmethod
    def from_preset(cls, size: str, backbone: str = "xlstm[1:0]", **overrides) -> LRAMConfig:
        """Config of a size preset ('tiny', 'small', '16M', '48M', '110M', '206M') and backbone variant
        ('xlstm[1:0]', 'xlstm[7:1]', 'mamba', 'transformer')."""
        kind, d_model, num_blocks, options = backbone_settings(size, backbone)
        options = {**options, **overrides.pop("backbone_options", {})}
        return cls(backbone=kind, d_model=d_model, num_blocks=num_blocks, backbone_options=options, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LRAMConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"LRAMConfig: unknown field(s) {unknown}; valid fields are {sorted(valid)}")
        return cls(**d)

    @property
    def tokenizer(self) -> ActionTokenizer:
        return ActionTokenizer(self.num_discrete, self.num_bins, decode=self.bin_decode)

    @property
    def vocab_size(self) -> int:
        return self.num_discrete + self.num_bins

    @property
    def action_pad_id(self) -> int:
        return self.vocab_size

    @property
    def tokens_per_step(self) -> int:
        return (
            (self.max_act_dim if self.action_condition else 0)
            + int(self.reward_condition)
            + 1
            + int(self.rtg_condition)
        )


@dataclass
class TrajectoryBatch:
    """A batch of trajectory windows, all from one kind of domain (all discrete or all continuous).

    states: [B, C, d<=state_dim] float, or [B, C, 3, 64, 64] uint8 images.
    returns_to_go: [B, C] (raw; divided by reward_scale inside the model).
    rewards: [B, C], the reward received after the action of each step (as stored in episode files).
    actions: [B, C] int (discrete) or [B, C, a<=max_act_dim] float in [-1, 1]; needed for the loss and
        for action_condition.
    timestep_mask: [B, C] bool, False on padding; each row's True entries must be one contiguous run.
    action_dims: real continuous action dims (int or [B]); num_actions: valid discrete actions (int or [B]).
    reward_scale: float or [B].  prev_reward / prev_action: the reward / action just before the window
        ([B] / [B] or [B, a]); zero / none at an episode start.
    first_step: [B, C] bool, True where an episode starts inside the window (in-context learning
        histories): there the previous reward is 0 and the previous action is padding, as after a reset.
    """

    states: torch.Tensor
    returns_to_go: torch.Tensor
    rewards: torch.Tensor
    actions: torch.Tensor | None = None
    timestep_mask: torch.Tensor | None = None
    discrete: bool = False
    action_dims: int | torch.Tensor | None = None
    num_actions: int | torch.Tensor | None = None
    reward_scale: float | torch.Tensor = 1.0
    prev_reward: torch.Tensor | None = None
    prev_action: torch.Tensor | None = None
    first_step: torch.Tensor | None = None  # [B, C] bool: an episode starts here (windows spanning episodes)

    def to(self, device) -> TrajectoryBatch:
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                     if isinstance(getattr(self, f.name), torch.Tensor)}
        )


@dataclass
class PolicyOutput:
    logits: torch.Tensor  # [B, C, max_act_dim, vocab]
    hidden: torch.Tensor  # [B, C, d_model] backbone output at the read-out tokens
    state: RecurrentState | None = None


class LRAMPolicy(nn.Module):
    """Multi-domain action model: encoders -> interleaved tokens -> LayerNorm -> backbone -> shared head."""

    def __init__(self, config: LRAMConfig):
        super().__init__()
        self.config = config
        H = config.d_model
        self.tokenizer = config.tokenizer
        self.embed_state = Linear(config.state_dim, H)
        self.image_encoder = ImpalaEncoder(H, config.image_shape) if config.use_images else None
        self.embed_rtg = Linear(1, H) if config.rtg_condition else None
        self.embed_reward = Linear(1, H) if config.reward_condition else None
        self.embed_action = nn.Embedding(config.vocab_size + 1, H) if config.action_condition else None
        self.embed_ln = nn.LayerNorm(H)
        self.backbone: Backbone = build_backbone(
            config.backbone, d_model=H, num_blocks=config.num_blocks, **config.backbone_options
        )
        self.action_head = Linear(H, config.max_act_dim * config.vocab_size)
        self._init_embeddings()

    @torch.no_grad()
    def _init_embeddings(self) -> None:
        for m in (self.embed_state, self.embed_rtg, self.embed_reward, self.action_head):
            if m is not None:
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.embed_action is not None:
            nn.init.normal_(self.embed_action.weight, std=0.02)

    @classmethod
    def from_preset(cls, size: str, backbone: str = "xlstm[1:0]", **overrides) -> LRAMPolicy:
        return cls(LRAMConfig.from_preset(size, backbone, **overrides))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ embedding
    def _is_image(self, states: torch.Tensor, batch_dims: int) -> bool:
        return states.dim() == batch_dims + 3

    def embed_states(self, states: torch.Tensor, batch_dims: int) -> torch.Tensor:
        """[*batch, d] floats or [*batch, 3, 64, 64] uint8 -> [*batch, H]."""
        lead = states.shape[:batch_dims]
        if self._is_image(states, batch_dims):
            if self.image_encoder is None:
                raise ValueError("states: this model was built with use_images=False but got image states")
            return self.image_encoder(states.reshape(-1, *states.shape[batch_dims:])).reshape(*lead, -1)
        pad = self.config.state_dim - states.shape[-1]
        return self.embed_state(F.pad(states, (0, pad)) if pad else states)

    def embed_groups(
        self,
        states: torch.Tensor,
        rtg: torch.Tensor,
        prev_reward: torch.Tensor,
        prev_action_tokens: torch.Tensor | None,
        reward_scale: torch.Tensor,
        batch_dims: int,
    ) -> torch.Tensor:
        """Token groups [*batch, G, H] for timesteps (batch_dims=2: [B, C]; =1: one step [B])."""
        cfg = self.config
        scale = reward_scale.reshape(-1, *([1] * (batch_dims - 1))).to(rtg.dtype)
        parts = []
        if cfg.action_condition:
            parts.extend(self.embed_action(prev_action_tokens).unbind(-2))
        if cfg.reward_condition:
            parts.append(self.embed_reward((prev_reward / scale).unsqueeze(-1)))
        parts.append(self.embed_states(states, batch_dims))
        if cfg.rtg_condition:
            parts.append(self.embed_rtg((rtg / scale).unsqueeze(-1)))
        return self.embed_ln(torch.stack(parts, dim=batch_dims))

    def action_tokens(self, actions: torch.Tensor, discrete: bool, action_dims: torch.Tensor | None = None):
        """Actions -> [*, max_act_dim] token ids; padded dims (beyond ``action_dims`` [B], and dims > 0 of
        discrete actions) get the pad id."""
        A, pad = self.config.max_act_dim, self.config.action_pad_id
        if discrete:
            tok = torch.full((*actions.shape, A), pad, dtype=torch.long, device=actions.device)
            tok[..., 0] = actions.long()
            return tok
        tok = F.pad(self.tokenizer.encode_continuous(actions), (0, A - actions.shape[-1]), value=pad)
        if action_dims is not None:
            real = torch.arange(A, device=tok.device) < action_dims.reshape(-1, *([1] * (tok.dim() - 1)))
            tok = tok.masked_fill(~real, pad)
        return tok

    # ------------------------------------------------------------------ parallel mode
    def forward(self, batch: TrajectoryBatch, state: RecurrentState | None = None,
                return_state: bool = False) -> PolicyOutput:
        """Logits for every timestep of a batch of windows (training / validation)."""
        cfg = self.config
        B, C = self._check_batch(batch)
        device = batch.returns_to_go.device
        mask = batch.timestep_mask
        shift = None
        if mask is not None and not bool(mask.all()):
            if state is not None:
                raise ValueError("timestep_mask: padding is not supported when continuing from a state")
            shift = _first_true(mask)  # rows are rolled so that real timesteps come first
        states, rtg, rewards = batch.states, batch.returns_to_go, batch.rewards
        actions, first = batch.actions, batch.first_step
        if shift is not None:
            states, rtg, rewards = (_roll_rows(t, shift) for t in (states, rtg, rewards))
            actions = _roll_rows(actions, shift) if actions is not None else None
            first = _roll_rows(first, shift) if first is not None else None
        prev_r0 = batch.prev_reward if batch.prev_reward is not None else torch.zeros(B, device=device)
        prev_reward = torch.cat([prev_r0.to(rewards.dtype).unsqueeze(1), rewards[:, :-1]], dim=1)
        if first is not None:
            prev_reward = prev_reward.masked_fill(first, 0.0)
        prev_tokens = None
        if cfg.action_condition:
            if actions is None:
                raise ValueError("actions: required by a model with action_condition=True")
            dims = None if batch.discrete else self._action_dims(batch)
            tok = self.action_tokens(actions, batch.discrete, dims)  # [B, C, A]
            if batch.prev_action is not None:
                first_tok = self.action_tokens(batch.prev_action, batch.discrete, dims).unsqueeze(1)
            else:
                first_tok = torch.full_like(tok[:, :1], cfg.action_pad_id)
            prev_tokens = torch.cat([first_tok, tok[:, :-1]], dim=1)
            if first is not None:
                prev_tokens = prev_tokens.masked_fill(first.unsqueeze(-1), cfg.action_pad_id)
        scale = torch.as_tensor(batch.reward_scale, device=device, dtype=torch.float32).expand(B)
        groups = self.embed_groups(states, rtg, prev_reward, prev_tokens, scale, batch_dims=2)  # [B, C, G, H]
        G = groups.shape[2]
        y, new_state = self.backbone(groups.reshape(B, C * G, -1), state, return_state=return_state)
        hidden = y[:, G - 1 :: G]  # read-out at each group's last token
        if shift is not None:
            hidden = _roll_rows(hidden, -shift)
        logits = self.action_head(hidden).reshape(B, C, cfg.max_act_dim, cfg.vocab_size)
        return PolicyOutput(logits=logits, hidden=hidden, state=new_state)

    def loss(self, batch: TrajectoryBatch, output: PolicyOutput | None = None,
             token_count: torch.Tensor | float | None = None, metrics: bool = True) -> tuple[torch.Tensor, dict]:
        """Masked cross-entropy over action tokens (padded timesteps and action dims contribute nothing).
        The mean is over this batch's valid tokens, or over ``token_count`` tokens if given (data-parallel
        training passes the global count / world size, so that averaging the ranks' gradients gives the
        exact global mean).  ``metrics=False`` skips the diagnostics (accuracy, action MSE: an arg-max over
        every logit and host syncs), which a training step does not use; the returned dict is then empty."""
        if batch.actions is None:
            raise ValueError("actions: the loss needs target actions")
        out = self(batch) if output is None else output
        targets, valid = self.targets(batch)
        logits = out.logits
        if batch.discrete:
            logits = logits[:, :, :1]
        flat = logits.reshape(-1, logits.shape[-1]).float()
        if batch.discrete or self.config.label_sigma_bins <= 0:
            ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none")
        else:
            soft = self._soft_targets(self._padded_actions(batch).reshape(-1))
            ce = -(F.log_softmax(flat, -1)[:, self.config.num_discrete :] * soft).sum(-1)
        w = valid.reshape(-1).float()
        n = w.sum().clamp_min(1.0)
        loss = (ce * w).sum() / (n if token_count is None else token_count)
        if not metrics:
            return loss, {}
        with torch.no_grad():
            pred = logits.argmax(-1)
            acc = ((pred == targets).float().reshape(-1) * w).sum() / n
            metrics = {"loss": loss.item(), "perplexity": float(torch.exp(loss).item()), "accuracy": acc.item(),
                       "tokens": int(n.item())}
            if not batch.discrete:
                err = (self.tokenizer.decode_continuous(pred) - self._padded_actions(batch)) ** 2
                metrics["action_mse"] = float(((err.reshape(-1) * w).sum() / n).item())
        return loss, metrics

    def _soft_targets(self, actions: torch.Tensor) -> torch.Tensor:
        """[N] continuous actions -> [N, num_bins] target distributions: a Gaussian of ``label_sigma_bins``
        bins around each action integrated over the bins (the mass outside [-1, 1] goes to the edge bins)."""
        tok = self.tokenizer
        sigma = self.config.label_sigma_bins * tok.bin_width
        edges = tok.low + tok.bin_width * torch.arange(1, tok.num_bins, device=actions.device, dtype=torch.float32)
        cdf = torch.special.ndtr((edges - actions.float().clamp(tok.low, tok.high).unsqueeze(-1)) / sigma)  # [N, bins-1]
        cdf = F.pad(cdf, (1, 0), value=0.0)
        cdf = F.pad(cdf, (0, 1), value=1.0)
        return cdf[:, 1:] - cdf[:, :-1]

    def targets(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Target token ids and the validity mask: [B, C, 1] for discrete, [B, C, max_act_dim] continuous."""
        B, C = batch.returns_to_go.shape
        device = batch.returns_to_go.device
        tmask = batch.timestep_mask if batch.timestep_mask is not None else torch.ones(B, C, dtype=torch.bool,
                                                                                        device=device)
        if batch.discrete:
            n = batch.num_actions if batch.num_actions is not None else self.config.num_discrete
            if checks_enabled():
                nmax = int(torch.as_tensor(n).max()) if isinstance(n, torch.Tensor) else int(n)
                check_range("actions", batch.actions[tmask], 0, nmax - 1)
            return batch.actions.long().unsqueeze(-1), tmask.unsqueeze(-1)
        dims = self._action_dims(batch)
        dim_mask = torch.arange(self.config.max_act_dim, device=device) < dims.unsqueeze(-1)  # [B, A]
        targets = self.tokenizer.encode_continuous(self._padded_actions(batch))
        return targets, tmask.unsqueeze(-1) & dim_mask.unsqueeze(1)

    def _padded_actions(self, batch: TrajectoryBatch) -> torch.Tensor:
        a = batch.actions.float()
        return F.pad(a, (0, self.config.max_act_dim - a.shape[-1]))

    def _action_dims(self, batch: TrajectoryBatch) -> torch.Tensor:
        B = batch.returns_to_go.shape[0]
        device = batch.returns_to_go.device
        dims = batch.action_dims
        if dims is None:
            dims = batch.actions.shape[-1] if batch.actions is not None else self.config.max_act_dim
        return torch.as_tensor(dims, device=device).expand(B)

    # ------------------------------------------------------------------ decoding
    def decode(self, logits: torch.Tensor, discrete: bool, num_actions=None, action_dims=None) -> torch.Tensor:
        """Greedy actions from read-out logits [B, max_act_dim, vocab]: discrete -> [B] ids restricted to the
        environment's valid actions; continuous -> [B, max_act_dim] values restricted to continuous tokens
        (dims beyond ``action_dims`` are set to 0)."""
        B = logits.shape[0]
        if discrete:
            n = torch.as_tensor(self.config.num_discrete if num_actions is None else num_actions,
                                device=logits.device).expand(B)
            ids = torch.arange(self.config.vocab_size, device=logits.device)
            masked = logits[:, 0].masked_fill(ids >= n.unsqueeze(-1), float("-inf"))
            return masked.argmax(-1)
        nd = self.config.num_discrete
        if self.config.continuous_decode == "mean":
            tok = self.tokenizer
            centres = tok.decode_continuous(torch.arange(nd, nd + tok.num_bins, device=logits.device))
            values = torch.softmax(logits[..., nd:].float(), -1) @ centres
        else:
            values = self.tokenizer.decode_continuous(logits[..., nd:].argmax(-1) + nd)
        if action_dims is not None:
            dims = torch.as_tensor(action_dims, device=logits.device).expand(B)
            values = values * (torch.arange(values.shape[-1], device=logits.device) < dims.unsqueeze(-1))
        return values

    # ------------------------------------------------------------------ checks
    def _check_batch(self, batch: TrajectoryBatch) -> tuple[int, int]:
        if not isinstance(batch, TrajectoryBatch):
            raise ValueError(f"batch: expected a TrajectoryBatch, got {type(batch).__name__}")
        cfg = self.config
        dims = check_tensor("returns_to_go", batch.returns_to_go, ["B", "C"], floating=True)
        B, C = dims["B"], dims["C"]
        check_tensor("rewards", batch.rewards, [B, C], floating=True)
        s = batch.states
        if not checks_enabled():
            return B, C
        if s.dim() == 5:
            check_tensor("states", s, [B, C, *cfg.image_shape], dtype=torch.uint8)
        else:
            check_tensor("states", s, [B, C, None], floating=True)
            if s.shape[-1] > cfg.state_dim:
                raise ValueError(f"states: at most {cfg.state_dim} features, got {s.shape[-1]}")
        if batch.timestep_mask is not None:
            check_tensor("timestep_mask", batch.timestep_mask, [B, C], dtype=torch.bool)
            _check_contiguous(batch.timestep_mask)
        if batch.actions is not None:
            if batch.discrete:
                check_tensor("actions", batch.actions, [B, C], integer=True)
                valid = batch.actions if batch.timestep_mask is None else batch.actions[batch.timestep_mask]
                check_range("actions", valid, 0, cfg.num_discrete - 1)
            else:
                check_tensor("actions", batch.actions, [B, C, None], floating=True)
                if batch.actions.shape[-1] > cfg.max_act_dim:
                    raise ValueError(f"actions: at most {cfg.max_act_dim} dims, got {batch.actions.shape[-1]}")
        if batch.prev_reward is not None:
            check_tensor("prev_reward", batch.prev_reward, [B], floating=True)
        if batch.first_step is not None:
            check_tensor("first_step", batch.first_step, [B, C], dtype=torch.bool)
        return B, C

    # ------------------------------------------------------------------ recurrent mode
    def step(self, obs: torch.Tensor, prev_reward: torch.Tensor, rtg: torch.Tensor, reward_scale: torch.Tensor,
             state: RecurrentState, prev_action_tokens: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, RecurrentState]:
        """One environment step per row, the mirror of :meth:`forward`: the token group (a_{t-1}, r_{t-1}, s_t,
        R_t) of each row, one backbone ``step`` over it, the action head at its last token.  The one place an
        environment step is computed (agents, the ONNX export and the server wrap it).

        obs: [B, d] vectors (standardised as in training) or [B, 3, 64, 64] uint8; prev_reward, rtg,
        reward_scale: [B] raw; prev_action_tokens: [B, max_act_dim] (action_condition only).  Returns the
        logits [B, max_act_dim, vocab] and the new state (recurrent backbones update ``state`` in place)."""
        tokens = self.embed_groups(obs, rtg, prev_reward, prev_action_tokens, reward_scale, batch_dims=1)
        y, state = self.backbone.step(tokens, state)
        return self.action_head(y[:, -1]).reshape(obs.shape[0], self.config.max_act_dim, -1), state

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        """The recurrent state of ``batch_size`` fresh episodes."""
        return self.backbone.init_state(batch_size, device)

    def prepare_for_inference(self) -> str:
        """Choose the implementation of :meth:`step` once, explicitly: lram's fused CPU kernels where the
        backbone's ``step_kernel`` setting and the weights allow them, PyTorch ops otherwise.  Returns the
        name of the choice.  A policy never prepared steps with PyTorch ops (same function, slower)."""
        from lram.models.layers import use_row_kernel

        choice = self.backbone.prepare_for_inference()
        use_row_kernel(self, choice == "fused")
        return choice

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder, domains=(), step: int | None = None):
        """Write weights, config and domain specs to ``folder`` atomically (see lram.models.persistence)."""
        from lram.models.persistence import save_pretrained

        return save_pretrained(folder, self, domains if domains else getattr(self, "domains", {}).values(), step=step)

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu") -> LRAMPolicy:
        """A ready policy (eval mode) from a policy folder or a run folder's newest checkpoint, verified against
        its checksum; ``policy.domains`` holds its domain specs (name -> DomainSpec)."""
        from lram.models.persistence import load_pretrained

        return load_pretrained(path, device)

    # ------------------------------------------------------------------ acting
    def make_agent(self, num_envs: int, **kwargs) -> RecurrentAgent:
        return RecurrentAgent(self, num_envs, **kwargs)


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row (0 for rows without any)."""
    return mask.float().argmax(dim=1)


def _roll_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Row b of the result at t is row b of x at (t + shift[b]) mod T (dim 1 is time)."""
    B, T = x.shape[:2]
    idx = (torch.arange(T, device=x.device).unsqueeze(0) + shift.unsqueeze(1)) % T  # [B, T]
    idx = idx.reshape(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, idx)


def _check_contiguous(mask: torch.Tensor) -> None:
    """Each row's True entries must form one run (left-, right- or no padding)."""
    runs = (mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0].long()  # number of runs of True
    bad = runs > 1
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"timestep_mask: row {row} has gaps; real timesteps must be one contiguous run")


class RecurrentAgent:
    """Acts in a batch of environments, one backbone ``step`` per environment step whatever the history.

    Each row is one environment.  Call :meth:`act` once per environment step with the new observation, the
    reward of the previous step and the current return-to-go (raw, not scaled); rows marked by
    :meth:`reset` start a new episode (their recurrent state is cleared and their previous reward and
    action are ignored).

    Parameters: ``discrete`` (the action kind of these environments), ``num_actions`` (valid discrete
    actions, int or per row) or ``action_dims`` (continuous dims, int or per row), ``reward_scale`` (int,
    float or per row), ``state_mean`` / ``state_std`` (the domain's state normalisation from the checkpoint's
    registry: vector observations are standardised by them before embedding, as in training).
    """

    def __init__(self, model: LRAMPolicy, num_envs: int, *, discrete: bool, num_actions=None,
                 action_dims=None, reward_scale: float | torch.Tensor = 1.0, device=None, compile: bool = False,
                 state_mean=None, state_std=None):
        check_positive_int("num_envs", num_envs)
        self.model = model
        self.num_envs = num_envs
        self.discrete = discrete
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        cfg = model.config
        if discrete:
            n = torch.as_tensor(cfg.num_discrete if num_actions is None else num_actions)
            check_range("num_actions", n, 1, cfg.num_discrete)
            self.num_actions, self.action_dims = n.to(self.device).expand(num_envs), None
        else:
            d = torch.as_tensor(cfg.max_act_dim if action_dims is None else action_dims)
            check_range("action_dims", d, 1, cfg.max_act_dim)
            self.action_dims, self.num_actions = d.to(self.device).expand(num_envs), None
        self.reward_scale = torch.as_tensor(reward_scale, dtype=torch.float32, device=self.device).expand(num_envs)
        if (state_mean is None) != (state_std is None):
            raise ValueError("state_mean, state_std: give both (the domain's state normalisation) or neither")
        self.state_mean = None if state_mean is None else torch.as_tensor(state_mean, dtype=torch.float32, device=self.device)
        self.state_std = None if state_std is None else torch.as_tensor(state_std, dtype=torch.float32, device=self.device)
        self.state = model.init_state(num_envs, self.device)
        self.fresh = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self.prev_action_tokens = torch.full((num_envs, cfg.max_act_dim), cfg.action_pad_id, device=self.device)
        self.last_logits: torch.Tensor | None = None
        # compile=True: torch.compile the whole step (embedding, backbone step, head) into fused kernels,
        # which removes most of the per-op overhead of PyTorch ops (GPUs); on the CPU the eager step with
        # lram's fused CPU kernels is ~2x faster than a compiled step
        self.implementation = "compiled" if compile else model.prepare_for_inference()
        self._step_fn = torch.compile(model.step, dynamic=None) if compile else model.step

    @classmethod
    def for_task(cls, model: LRAMPolicy, domain, task, num_envs: int, **kwargs) -> RecurrentAgent:
        """An agent for ``num_envs`` environments of one task (``domain``: a DomainSpec, ``task``: a TaskSpec)."""
        return cls(model, num_envs, discrete=domain.discrete,
                   num_actions=task.num_actions if domain.discrete else None,
                   action_dims=None if domain.discrete else task.action_dim, reward_scale=domain.reward_scale,
                   state_mean=domain.state_mean, state_std=domain.state_std, **kwargs)

    def reset(self, mask: torch.Tensor | None = None, keep_context: bool = False) -> None:
        """Start new episodes in the rows where ``mask`` [num_envs] is True (all rows if None).  With
        ``keep_context`` the recurrent state is kept (in-context RL across episodes): only the previous
        reward and action of those rows are dropped, as at an episode start inside a training window."""
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        mask = torch.as_tensor(mask, device=self.device)
        check_tensor("mask", mask, [self.num_envs], dtype=torch.bool)
        if not keep_context:
            self.state = self.model.backbone.reset_state(self.state, mask)
        self.fresh = self.fresh | mask
        self.prev_action_tokens[mask] = self.model.config.action_pad_id

    @torch.no_grad()
    def act(self, obs: torch.Tensor, prev_reward: torch.Tensor, rtg: torch.Tensor) -> torch.Tensor:
        """One environment step for every row: returns actions ([B] ids, or [B, max_act_dim] values with
        dims beyond each row's ``action_dims`` set to 0)."""
        B = self.num_envs
        obs = torch.as_tensor(obs, device=self.device)
        prev_reward = torch.as_tensor(prev_reward, dtype=torch.float32, device=self.device)
        rtg = torch.as_tensor(rtg, dtype=torch.float32, device=self.device)
        if checks_enabled():
            if obs.dim() == 4:
                check_tensor("obs", obs, [B, *self.model.config.image_shape], dtype=torch.uint8)
            else:
                check_tensor("obs", obs, [B, None], floating=True)
            check_tensor("prev_reward", prev_reward, [B])
            check_tensor("rtg", rtg, [B])
        prev_reward = torch.where(self.fresh, torch.zeros_like(prev_reward), prev_reward)
        if self.state_mean is not None and obs.is_floating_point():
            d = obs.shape[-1]
            if d > self.state_mean.numel():
                raise ValueError(f"obs: {d} features, more than the domain's normalisation has ({self.state_mean.numel()})")
            obs = standardize(obs, self.state_mean, self.state_std)
        tokens = self.prev_action_tokens if self.model.config.action_condition else None
        logits, self.state = self._step_fn(obs, prev_reward, rtg, self.reward_scale, self.state, tokens)
        self.last_logits = logits
        actions = self.model.decode(logits, self.discrete, self.num_actions, self.action_dims)
        self.fresh = torch.zeros_like(self.fresh)
        if self.model.config.action_condition:
            self.prev_action_tokens = self.model.action_tokens(actions, self.discrete, self.action_dims)
        return actions
