"""Loading models (hub ids, local directories, the embedded `toy/...` models) and the classifier.

The classifier is shaped like the MambaLRP reference implementation's: a causal Mamba whose head
maps to classes (`lm_head = Linear(hidden, num_labels)`), so `model(ids).logits` is
[batch, seq_len, num_labels] and the prediction is read at position -1 of left-padded input.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaModel, FalconMambaPreTrainedModel
from transformers.models.mamba.modeling_mamba import MambaModel, MambaPreTrainedModel
from transformers.models.mamba2.modeling_mamba2 import Mamba2Model, Mamba2PreTrainedModel

TOY_DIR = Path(__file__).parent / "zoo" / "models"
#: files of which a local directory must hold one for a tokenizer to be loaded from it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


class _ClassifierMixin:
    """Backbone + class head; the loss (if labels are given) is read at the last position."""

    def _build(self, config, backbone_cls):
        self.backbone = backbone_cls(config)
        self.lm_head = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, **kwargs):
        hidden = self.backbone(
            input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()
        loss = F.cross_entropy(logits[:, -1], labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class MambaClassifier(_ClassifierMixin, MambaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self._build(config, MambaModel)


class FalconMambaClassifier(_ClassifierMixin, FalconMambaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self._build(config, FalconMambaModel)


class Mamba2Classifier(_ClassifierMixin, Mamba2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self._build(config, Mamba2Model)


CLASSIFIERS = {"mamba": MambaClassifier, "falcon_mamba": FalconMambaClassifier, "mamba2": Mamba2Classifier}


def make_classifier(config) -> nn.Module:
    """A freshly initialised classifier for a Mamba/FalconMamba/Mamba-2 config with `num_labels` set."""
    if config.model_type not in CLASSIFIERS:
        raise TypeError(f"no classifier for model_type {config.model_type!r}; supported: {sorted(CLASSIFIERS)}")
    config.architectures = [CLASSIFIERS[config.model_type].__name__]
    return CLASSIFIERS[config.model_type](config)


def list_toy_models() -> list[str]:
    """The embedded models shipped inside the package (they load offline)."""
    if not TOY_DIR.is_dir():
        return []
    return sorted(f"toy/{p.name}" for p in TOY_DIR.iterdir() if (p / "config.json").is_file())


def resolve_path(name_or_path: str | os.PathLike) -> str:
    """`toy/<name>` -> its folder inside the package; anything else is passed on unchanged."""
    name = str(name_or_path)
    if name.startswith("toy/"):
        folder = TOY_DIR / name[len("toy/"):]
        if not (folder / "config.json").is_file():
            raise ValueError(f"unknown embedded model {name!r}; available: {list_toy_models() or 'none installed'}")
        return str(folder)
    return name


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    **kwargs,
):
    """(model, tokenizer) from an embedded `toy/<name>`, a local HF directory or a hub id.

    The model is in eval mode. Weights load from safetensors. `trust_remote_code` stays off
    unless you turn it on. Offline with an uncached hub id, this raises one OSError sentence.
    A local directory without tokenizer files gives tokenizer None (with a warning).
    """
    path = resolve_path(name_or_path)
    common = dict(trust_remote_code=trust_remote_code, **kwargs)
    try:
        config = AutoConfig.from_pretrained(path, **common)
        architecture = (config.architectures or [None])[0]
        loader = {c.__name__: c for c in CLASSIFIERS.values()}.get(architecture, AutoModelForCausalLM)
        model = loader.from_pretrained(path, dtype=dtype, use_safetensors=True, **common)
        if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
            # transformers 5 would build an empty default tokenizer for the model type here (vocab of 2)
            warnings.warn(f"{str(name_or_path)!r} holds no tokenizer files; returning tokenizer=None", stacklevel=2)
            tokenizer = None
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except OSError as err:
        where = "a local directory" if Path(path).exists() else "a hub id"
        raise OSError(
            f"could not load {name_or_path!r} as {where}: {str(err).splitlines()[0]} "
            f"If you are offline, only cached models load; the embedded models "
            f"({', '.join(list_toy_models()) or 'toy/...'}) always work offline."
        ) from None
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
