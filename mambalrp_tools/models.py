"""Loading models (hub ids, local directories, the embedded `toy/...` models) and the classifier.

The classifier is shaped like the MambaLRP reference implementation's: a causal Mamba whose head
maps to classes (`lm_head = Linear(hidden, num_labels)`), so `model(ids).logits` is
[batch, seq_len, num_labels] and the prediction is read at position -1 of left-padded input.
"""

from __future__ import annotations

import contextlib
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
    verbose: bool = False,
    **kwargs,
):
    """(model, tokenizer) from an embedded `toy/<name>`, a local HF directory or a hub id.

    The model is in eval mode. Weights load from safetensors. `trust_remote_code` stays off
    unless you turn it on. A local directory is tried first; a path that names none raises
    FileNotFoundError. A hub id that is not cached fails at once, in one OSError sentence, when
    HF_HUB_OFFLINE is set or the hub cannot be reached (no retries). `verbose`: show transformers'
    progress bars. A local directory without tokenizer files gives tokenizer None (with a warning).
    """
    path = resolve_path(name_or_path)
    local = Path(path).expanduser()
    if local.is_dir():
        path = str(local)
    elif _looks_like_path(path):
        raise FileNotFoundError(f"no such directory: {str(name_or_path)!r} ({local.resolve()}); the embedded models "
                                f"are {', '.join(list_toy_models()) or 'toy/...'}")
    common = dict(trust_remote_code=trust_remote_code, **kwargs)
    if not local.is_dir() and "local_files_only" not in common and not _cached(path):
        reason = _hub_unreachable()
        if reason:
            raise OSError(_offline_message(name_or_path, reason)) from None
    try:
        with _progress_bars(verbose):
            config = AutoConfig.from_pretrained(path, **common)
            architecture = (config.architectures or [None])[0]
            loader = {c.__name__: c for c in CLASSIFIERS.values()}.get(architecture, AutoModelForCausalLM)
            model = loader.from_pretrained(path, dtype=dtype, use_safetensors=True, **common)
            if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
                # transformers 5 would build an empty default tokenizer for the model type here (vocab of 2)
                warnings.warn(f"{str(name_or_path)!r} holds no tokenizer files; returning tokenizer=None",
                              stacklevel=2)
                tokenizer = None
            else:
                tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except OSError as err:
        where = "a local directory" if local.is_dir() else "a hub id"
        raise OSError(
            f"could not load {str(name_or_path)!r} as {where}: {' '.join(str(err).split())[:300]} "
            f"Offline, only cached models load (HF_HUB_OFFLINE=1 skips the network); the embedded models "
            f"({', '.join(list_toy_models()) or 'toy/...'}) always work offline."
        ) from None
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (./x, /x, ~/x, a/b/c, C:\\x) is meant as a path."""
    return (name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name
            or (len(name) > 1 and name[1] == ":"))


def _cached(repo_id: str) -> bool:
    """Whether the hub cache holds this model's config (then loading needs no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub would reject: let transformers say why
        return True
    return isinstance(found, str)


def _hub_unreachable(timeout: float = 1.5) -> str | None:
    """Why the hub cannot be reached (HF_HUB_OFFLINE set, or no connection within `timeout` s), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    import socket
    import threading
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list = []

    def probe():  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{host} is unreachable ({type(err).__name__})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"{host} did not answer within {timeout:g} s"


def _offline_message(name, reason: str) -> str:
    toys = ", ".join(list_toy_models()) or "toy/..."
    if reason.startswith("HF_HUB_OFFLINE"):
        return (f"cannot load {str(name)!r}: it is no local directory and not in the hub cache, and HF_HUB_OFFLINE=1 "
                f"keeps the hub out; the embedded models ({toys}) always work offline.")
    return (f"cannot load {str(name)!r}: it is no local directory, not in the hub cache, and {reason}; "
            f"HF_HUB_OFFLINE=1 skips the network at once, and the embedded models ({toys}) always work offline.")


@contextlib.contextmanager
def _progress_bars(on: bool):
    """transformers' and huggingface_hub's progress bars on or off for the duration."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    before_tf, before_hub = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    if on:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        disable_progress_bars()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before_tf else hf_logging.disable_progress_bar)()
        (enable_progress_bars if before_hub else disable_progress_bars)()
