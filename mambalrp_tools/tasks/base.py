"""`Example`: what every task generator and dataset loader yields (DESIGN section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Example:
    input_ids: torch.Tensor  # LongTensor [T]
    target: int  # the token / class the model must output at the last position
    evidence: torch.Tensor  # LongTensor: positions holding the ground-truth evidence
    candidates: torch.Tensor | None = None  # positions among which evidence is sought; None = all
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
