"""The paper's real datasets through `datasets`: SST-2, SNLI, Emotion, Bias in Bios and Med-BIOS.

Each loader takes a hub id (default below) or a local copy in the same format: a folder written by
`Dataset.save_to_disk`, a folder of data files (`train.parquet`, `validation.jsonl`, ...) or a single
.parquet / .json / .jsonl / .csv file. Examples come back as `tasks.Example`s: target = class index,
evidence = the gendered words for the bios sets and empty otherwise (no ground truth is known).

    examples = tasks.load("sst2", n=500, seed=0, tokenizer=tok)                    # hub (needs network)
    examples = tasks.load("med_bios", n=500, tokenizer=tok, source="/data/bios.parquet")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


from .bios import LABELS as MED_LABELS
from .bios import lexicon_swaps
from .text import Encoder, word_example

# the 28 professions of Bias in Bios, in the order of its integer labels
BIOS_PROFESSIONS = (
    "accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist", "dietitian",
    "dj", "filmmaker", "interior_designer", "journalist", "model", "nurse", "painter", "paralegal", "pastor",
    "personal_trainer", "photographer", "physician", "poet", "professor", "psychologist", "rapper",
    "software_engineer", "surgeon", "teacher", "yoga_teacher",
)


@dataclass(frozen=True)
class Spec:
    source: str  # default hub id
    split: str
    text: tuple[str, ...]  # text column(s); two are joined with `pair_separator`
    label: str
    labels: tuple[str, ...]
    toy: str | None = None  # embedded model whose tokenizer is the default
    aliases: dict = field(default_factory=dict)  # other column names accepted in local copies


SPECS = {
    "sst2": Spec("stanfordnlp/sst2", "validation", ("sentence",), "label", ("negative", "positive"), "sentiment",
                 {"sentence": ("text",)}),
    "snli": Spec("stanfordnlp/snli", "validation", ("premise", "hypothesis"), "label",
                 ("entailment", "neutral", "contradiction")),
    "emotion": Spec("dair-ai/emotion", "validation", ("text",), "label",
                    ("sadness", "joy", "love", "anger", "fear", "surprise")),
    "bias_in_bios": Spec("LabHC/bias_in_bios", "test", ("hard_text",), "profession", BIOS_PROFESSIONS, "bios",
                         {"hard_text": ("text", "bio"), "profession": ("label",)}),
    # Med-BIOS: the five medical professions of Bias in Bios, relabelled in the toy bios order
    "med_bios": Spec("LabHC/bias_in_bios", "test", ("hard_text",), "profession", MED_LABELS, "bios",
                     {"hard_text": ("text", "bio"), "profession": ("label",)}),
}

_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def read(source: str, split: str):
    """A `datasets.Dataset` from a hub id or a local path (see the module docstring)."""
    import datasets

    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"cannot read {path}: use one of {sorted(_FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"split {split!r} not in {path}; it has {list(data)}")
            data = data[split]
        return data
    return datasets.load_dataset(str(path) if path.is_dir() else source, split=split)


def _column(data, name: str, aliases: dict) -> str:
    for c in (name, *aliases.get(name, ())):
        if c in data.column_names:
            return c
    raise ValueError(f"column {name!r} not found; the dataset has {data.column_names} (pass text=/label=)")


def _label_names(data, column: str, default: tuple[str, ...]) -> tuple[str, ...]:
    feature = data.features.get(column)
    names = getattr(feature, "names", None)
    return tuple(names) if names else default


def load(name: str, n: int | None = 100, seed: int = 0, tokenizer=None, *, source: str | None = None,
         split: str | None = None, text: str | tuple[str, ...] | None = None, label: str | None = None,
         pair_separator: str = "|", max_words: int | None = None) -> list:
    """`n` examples (None: all) of hub dataset `name`, shuffled with `seed`.

    source: hub id or local path (default: the dataset's hub id); split: default per dataset;
    text/label: column names for local copies with other names; max_words: keep the first words only.
    For the bios sets, meta has gender ("male"/"female" when the data says) and the word swaps that
    `tasks.swap_gender` applies; for Med-BIOS other professions are dropped and labels follow
    `tasks.bios.LABELS`.
    """
    if name not in SPECS:
        raise ValueError(f"unknown hub dataset {name!r}; choose from {sorted(SPECS)}")
    spec = SPECS[name]
    if tokenizer is None:
        if spec.toy is None:
            raise ValueError(f"{name!r} has no embedded model; pass tokenizer= (e.g. the hub model's)")
        from .tokenizers import toy_tokenizer

        tokenizer = toy_tokenizer(spec.toy)
    data = read(source or spec.source, split or spec.split)
    text_cols = [_column(data, c, spec.aliases) for c in ((text,) if isinstance(text, str) else (text or spec.text))]
    label_col = _column(data, label or spec.label, spec.aliases)
    names = _label_names(data, label_col, BIOS_PROFESSIONS if name == "med_bios" else spec.labels)

    def to_index(value):
        """A label as an index into spec.labels, or None to drop the row (SNLI's -1, other professions)."""
        if isinstance(value, str):
            value = value.strip().lower().replace(" ", "_")
        elif value is None or int(value) < 0:
            return None
        else:
            value = names[int(value)] if int(value) < len(names) else None
        return spec.labels.index(value) if value in spec.labels else None

    rows = data.shuffle(seed=seed) if n is not None else data
    enc = Encoder(tokenizer)
    out = []
    for row in rows:
        target = to_index(row[label_col])
        if target is None:
            continue
        out.append(_row_example(name, spec, row, text_cols, target, enc, pair_separator, max_words))
        if n is not None and len(out) >= n:
            break
    return out


def _row_example(name, spec, row, text_cols, target, enc, sep, max_words):
    parts = [str(row[c]).split() for c in text_cols]
    words = parts[0] if len(parts) == 1 else [w for i, p in enumerate(parts) for w in ((sep,) if i else ()) + tuple(p)]
    if max_words is not None:
        words = words[:max_words]
    meta = {"label": spec.labels[target], "dataset": name, **{c: row[c] for c in text_cols}}
    evidence = ()
    if name in ("bias_in_bios", "med_bios"):
        swaps = lexicon_swaps(words)
        evidence = [i for i, _ in swaps]
        g = row.get("gender")
        gender = {0: "male", 1: "female", "m": "male", "f": "female"}.get(
            g if not isinstance(g, str) else g.lower()[:1], g)
        meta.update(gender=gender, occupation=spec.labels[target], words=words, swaps=swaps,
                    tokenizer=enc.tokenizer.name_or_path)
    if not words:
        return word_example(["."], target, enc, meta=meta)  # an empty text still yields an input
    ex = word_example(words, target, enc, evidence=evidence, meta=meta)
    return ex


__all__ = ["SPECS", "BIOS_PROFESSIONS", "load", "read"]
