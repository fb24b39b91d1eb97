"""What an architecture file provides: a patch map (module class -> replacement forward) and accessors.

The rest of the package reaches model internals only through these (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..backends import Backend
from ..numerics import activation_dtype
from ..recompute import HostSlabs
from ..rules import Rules


@dataclass(frozen=True)
class PatchContext:
    """What every replacement-forward factory receives; one per `lrp_mode` call."""

    rules: Rules
    backend: Backend
    checkpoint: str | None  # None, "device" or "cpu": per-layer recomputation
    slabs: HostSlabs  # host memory shared by all layers when checkpoint == "cpu"
    precision: str = "float32"  # "float32", "tf32" or "model": how matmuls run (see numerics)


#: factory(module, ctx) -> the replacement forward of that module instance
Factory = Callable[[torch.nn.Module, PatchContext], Callable]


@dataclass(frozen=True)
class Sizes:
    """The sizes that memory estimates read (`captum_methods.auto_batch`, `lrp_mode`'s checkpoint choice)."""

    layers: int
    hidden: int  # residual width: what a recomputed layer keeps per token
    inner: int  # channels the scan runs over (d_inner)
    state: int  # state size per channel (n)
    activation_floats: int  # floats autograd keeps per token, layer and inner channel


@dataclass
class LayerSSM:
    """One layer's selective scan for one input: true values (no rule applied), float32.

    y_t = sum_n C_t[n] s_t[d, n] + D[d] u_t[d],  s_t = exp(delta_t[d] A[d, n]) s_{t-1} + delta_t[d] B_t[n] u_t[d]
    """

    u: torch.Tensor  # [b, d, T]
    delta: torch.Tensor  # [b, d, T]
    A: torch.Tensor  # [d, n]
    B: torch.Tensor  # [b, n, T], shared by all channels
    C: torch.Tensor  # [b, n, T]
    D: torch.Tensor  # [d]
    mask: torch.Tensor | None = None  # [b, T]; columns of padded positions are zeroed

    def channels(self, index) -> "LayerSSM":
        """The same layer restricted to channels `index` (a slice or index tensor); for per-channel checks."""
        return LayerSSM(self.u[:, index], self.delta[:, index], self.A[index], self.B, self.C, self.D[index], self.mask)

    def to(self, dtype) -> "LayerSSM":
        return LayerSSM(*(t.to(dtype) for t in (self.u, self.delta, self.A, self.B, self.C, self.D)), self.mask)


class Architecture:
    """One model family. A subclass per file in `architectures/`, one instance in the registry."""

    name: str = "?"
    #: the user-facing model classes, for the TypeError of an unsupported model
    supported: str = ""
    #: module class -> factory; `lrp_mode` patches every module of the backbone whose class (or
    #: nearest base class) is a key
    patch_map: Mapping[type, Factory] = {}

    def layers(self, model) -> list[torch.nn.Module]:
        """The residual blocks, input side first."""
        raise NotImplementedError

    def mixer(self, layer) -> torch.nn.Module:
        """The sequence mixer of one block: called as `mixer(hidden_states, attention_mask=...)`, its
        output (first element if a tuple) is added to the residual stream."""
        raise NotImplementedError

    def final_norm(self, model) -> torch.nn.Module | None:
        """The norm between the last block and the head, if any."""
        return None

    def scan_quantities(self, mixer, hidden_states, attention_mask=None) -> LayerSSM:
        """The scan `mixer` runs for its input `hidden_states` [b, T, hidden]: no rule, no gradient."""
        raise NotImplementedError

    def sizes(self, model) -> Sizes:
        raise NotImplementedError

    def activation_dtype(self, model, precision: str) -> torch.dtype:
        """The dtype of the activations the patched mixers keep (memory estimates): at least float32
        unless the architecture's file keeps them in the model's dtype (`numerics.activation_dtype`)."""
        return activation_dtype(next(model.parameters()).dtype, "float32")

    def stages(self, model) -> list[tuple[str, list[torch.nn.Module]]]:
        """(name, modules) for the randomisation test, top down: head, final norm, last layer ... first
        layer, embeddings."""
        out = [("head", [model.get_output_embeddings()])]
        norm = self.final_norm(model)
        if norm is not None:
            out.append(("norm_f", [norm]))
        layers = self.layers(model)
        out += [(f"layer_{i}", [layers[i]]) for i in reversed(range(len(layers)))]
        out.append(("embeddings", [model.get_input_embeddings()]))
        return out

    def factory(self, module) -> Factory | None:
        """The patch-map entry for `module`: its own class first, then its base classes."""
        for cls in type(module).__mro__:
            if cls in self.patch_map:
                return self.patch_map[cls]
        return None
