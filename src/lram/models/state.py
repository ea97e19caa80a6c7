"""The explicit recurrent state shared by every backbone.

A :class:`RecurrentState` is a flat, ordered mapping ``name -> tensor`` in which **every tensor has the
batch as dimension 0**, plus a ``signature`` string naming the backbone configuration that produced it.
Because it is plain tensors, a state can be moved between devices, sliced by batch row (one row per
environment), concatenated, saved with safetensors and loaded again; because it carries the signature,
a backbone refuses a state made by another configuration with a clear error.

It is registered as a PyTorch pytree (leaves: its tensors in order; context: names and signature), so
``torch.compile``, ``torch.export`` and ``torch.utils._pytree`` functions take and return it as it is.

Backbones may update a state's tensors in place during ``step`` (the Transformer's KV cache does, to
avoid copying the cache every step); call :meth:`RecurrentState.clone` to keep an old state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

RowIndex = int | slice | Sequence[int] | torch.Tensor


class RecurrentState:
    """Named per-row tensors of a backbone's recurrent state (batch first), tagged with a config signature."""

    __slots__ = ("tensors", "signature")

    def __init__(self, tensors: Mapping[str, torch.Tensor], signature: str):
        self.tensors: dict[str, torch.Tensor] = dict(tensors)
        self.signature = signature
        sizes = [t.shape[0] for t in self.tensors.values()]
        if any(b != sizes[0] for b in sizes[1:]):  # (no set of sizes: symbolic sizes in an export must not be hashed)
            raise ValueError(f"RecurrentState: tensors disagree on the batch size: {sorted(set(sizes))}")

    # ------------------------------------------------------------------ access
    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.tensors[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def items(self):
        return self.tensors.items()

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {list(v.shape)}" for k, v in list(self.tensors.items())[:4])
        more = f", ... ({len(self.tensors)} tensors)" if len(self.tensors) > 4 else ""
        return f"RecurrentState(batch={self.batch_size}, {shapes}{more}; {self.signature})"

    # ------------------------------------------------------------ transforms
    def _map(self, fn) -> RecurrentState:
        return RecurrentState({k: fn(v) for k, v in self.tensors.items()}, self.signature)

    def to(self, device: torch.device | str | None = None) -> RecurrentState:
        """Move to a device (states keep their dtypes: recurrent states are fp32 by design)."""
        return self._map(lambda t: t.to(device))

    def clone(self) -> RecurrentState:
        return self._map(torch.clone)

    def detach(self) -> RecurrentState:
        """Cut the autograd graph (truncated back-propagation through time)."""
        return self._map(torch.Tensor.detach)

    def rows(self, index: RowIndex) -> RecurrentState:
        """A copy of the state of some batch rows (an int keeps the batch dim).  Always a copy, never a view,
        so that an in-place ``step`` on it cannot change this state."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        elif not isinstance(index, (slice, torch.Tensor)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        if isinstance(index, slice):
            return self._map(lambda t: t[index].clone())
        return self._map(lambda t: t[index.to(t.device)])

    def where(self, mask: torch.Tensor, other: RecurrentState) -> RecurrentState:
        """Rows from ``other`` where ``mask`` [B] is True, rows of ``self`` elsewhere."""
        if other.signature != self.signature or other.tensors.keys() != self.tensors.keys():
            raise ValueError("RecurrentState.where: the two states come from different configurations")
        out = {}
        for k, t in self.tensors.items():
            m = mask.to(t.device).view(-1, *([1] * (t.dim() - 1)))
            out[k] = torch.where(m, other.tensors[k], t)
        return RecurrentState(out, self.signature)

    @staticmethod
    def cat(states: Sequence[RecurrentState]) -> RecurrentState:
        """Concatenate states of the same configuration along the batch (e.g. to batch environments)."""
        if not states:
            raise ValueError("RecurrentState.cat: expected at least one state")
        first = states[0]
        for i, s in enumerate(states[1:], 1):
            if s.signature != first.signature or s.tensors.keys() != first.tensors.keys():
                raise ValueError(f"RecurrentState.cat: state {i} comes from a different configuration")
        return RecurrentState(
            {k: torch.cat([s.tensors[k] for s in states], dim=0) for k in first.tensors}, first.signature
        )

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for ``safetensors.torch.save_file`` (the signature goes in its metadata)."""
        return {k: v.contiguous() for k, v in self.tensors.items()}

    def metadata(self) -> dict[str, str]:
        return {"lram_state_signature": self.signature}

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> RecurrentState:
        if "lram_state_signature" not in metadata:
            raise ValueError("RecurrentState.from_state_dict: metadata lacks 'lram_state_signature'")
        return cls(tensors, metadata["lram_state_signature"])

    def save(self, path) -> None:
        from safetensors.torch import save_file

        from lram.utils.io import atomic_path

        with atomic_path(path) as tmp:
            save_file(self.state_dict(), str(tmp), metadata=self.metadata())

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> RecurrentState:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        return cls.from_state_dict(tensors, meta)


def _flatten(state: RecurrentState):
    return list(state.tensors.values()), (tuple(state.tensors), state.signature)


def _flatten_with_keys(state: RecurrentState):
    return [(pytree.MappingKey(k), v) for k, v in state.tensors.items()], (tuple(state.tensors), state.signature)


def _unflatten(values, context) -> RecurrentState:
    names, signature = context
    return RecurrentState(dict(zip(names, values)), signature)


pytree.register_pytree_node(RecurrentState, _flatten, _unflatten, serialized_type_name="lram.RecurrentState",
                            flatten_with_keys_fn=_flatten_with_keys)
