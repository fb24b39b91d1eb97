"""Task generators (determinism, evidence positions decoded back to words) and hub loaders on local fixtures."""

from __future__ import annotations

import json

import pytest
import torch

from mambalrp_tools import tasks
from mambalrp_tools.tasks import bios, needle, sentiment
from mambalrp_tools.tasks.tokenizers import build_word_tokenizer, toy_tokenizer

SYNTHETIC = ["copying", "needle", "bios", "sentiment"]
SMALL = {"copying": {}, "needle": {"max_context_length": 256}, "bios": {}, "sentiment": {}}


def _words(tok, ids):
    return tok.convert_ids_to_tokens(torch.as_tensor(ids).tolist())


def _same(a, b):
    return (torch.equal(a.input_ids, b.input_ids) and a.target == b.target and torch.equal(a.evidence, b.evidence)
            and a.text == b.text and a.meta == b.meta)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_deterministic_per_seed_and_well_formed(name):
    a = tasks.load(name, 6, seed=3, **SMALL[name])
    b = tasks.load(name, 6, seed=3, **SMALL[name])
    c = tasks.load(name, 6, seed=4, **SMALL[name])
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(_same(x, y) for x, y in zip(a, c))
    tok = toy_tokenizer(name)
    for ex in a:
        assert isinstance(ex, tasks.Example)
        assert ex.input_ids.dtype == torch.long and ex.input_ids.ndim == 1 and len(ex.input_ids) > 0
        assert ex.evidence.dtype == torch.long and len(ex.evidence) > 0
        assert int(ex.evidence.max()) < len(ex.input_ids)
        assert tok.unk_token_id not in ex.input_ids.tolist()  # the vocabulary covers every generated word
        # the ids are what the tokenizer makes of the text
        assert tok(ex.text, add_special_tokens=False)["input_ids"] == ex.input_ids.tolist()
        with pytest.raises(Exception):
            ex.target = 0  # frozen


def test_copying_evidence_is_the_source_of_the_target():
    tok = toy_tokenizer("copying")
    for ex in tasks.load("copying", 20, seed=0, min_length=5, max_length=20):
        L, j = ex.meta["length"], ex.meta["index"]
        words = _words(tok, ex.input_ids)
        assert words[L] == "|" and len(words) == L + 1 + j
        assert len(set(words[:L])) == L  # distinct symbols: unambiguous evidence
        assert words[L + 1:] == words[:j]  # the copy so far
        assert ex.evidence.tolist() == [j]
        assert _words(tok, ex.input_ids[ex.evidence])[0] == _words(tok, [ex.target])[0]
        assert ex.candidates.tolist() == list(range(L))
    fixed = tasks.load("copying", 3, seed=1, length=12, index=4)
    assert all(e.meta["length"] == 12 and e.meta["index"] == 4 for e in fixed)
    with pytest.raises(ValueError):
        tasks.load("copying", 1, length=200)  # more than the alphabet: symbols could not be distinct


@pytest.mark.parametrize("length,depth", [(64, 0.0), (300, 0.5), (513, 1.0), (200, None)])
def test_needle_exact_length_depth_and_evidence(length, depth):
    tok = toy_tokenizer("needle")
    for given in (0, 2):
        for ex in tasks.load("needle", 4, seed=1, context_length=length, depth=depth, given=given):
            assert len(ex.input_ids) == length == ex.meta["context_length"]
            words = _words(tok, ex.input_ids)
            code = list(ex.meta["code"])
            assert _words(tok, ex.input_ids[ex.evidence]) == code  # the needle's digits
            s, e = ex.meta["needle_start"], ex.meta["needle_end"]
            assert words[s:e] == ["the", "secret", "code", "is", *code]
            assert words[ex.meta["answer_position"]] == code[given] == _words(tok, [ex.target])[0]
            tail = ["what", "is", "the", "secret", "code", "?", "the", "secret", "code", "is", *code[:given]]
            assert words[-len(tail):] == tail
            if depth == 0.0:
                assert s == 0
            if depth == 1.0:
                assert e + 1 == length - len(tail)  # right before the question (after its ".")
            # distractors: digits outside the needle; the haystack has near-miss code sentences
            assert all(words[p] in needle.DIGITS for p in ex.meta["distractor_positions"])
            assert not set(ex.meta["distractor_positions"]) & set(ex.evidence.tolist())


def test_needle_has_distractors():
    text = " ".join(ex.text for ex in tasks.load("needle", 10, seed=0, context_length=1024))
    assert sum(f"the {w} code" in text for w in needle.OTHER_CODES) >= 4  # near-miss codes
    assert "the secret number" in text or "the secret room" in text or "the secret word" in text
    for ex in tasks.load("needle", 10, seed=0, context_length=512):  # exactly one true needle
        assert ex.text.count("the secret code is") == 2  # the needle and the question


def test_bios_gender_correlation_evidence_and_swap():
    tok = toy_tokenizer("bios")
    exs = tasks.load("bios", 400, seed=0, gender_correlation=0.9)
    majority = sum(e.meta["gender"] == bios.MAJORITY[e.meta["occupation"]] for e in exs) / len(exs)
    assert 0.85 < majority < 0.95
    balanced = tasks.load("bios", 400, seed=0, gender_correlation=0.5)
    assert 0.42 < sum(e.meta["gender"] == bios.MAJORITY[e.meta["occupation"]] for e in balanced) / 400 < 0.58
    assert sorted({e.target for e in exs}) == list(range(5))
    for ex in exs[:30]:
        assert bios.LABELS[ex.target] == ex.meta["occupation"]
        words = ex.text.split()
        assert not set(words) & set(bios.LABELS)  # the title never appears
        gendered = _words(tok, ex.input_ids[ex.evidence])
        assert all(w in bios.SWAP for w in gendered)
        sw = tasks.swap_gender(ex)
        assert sw.target == ex.target and sw.meta["gender"] != ex.meta["gender"]
        swapped = _words(tok, sw.input_ids[sw.evidence])
        assert [bios.SWAP[w] for w in gendered] == swapped or all(
            (a, b) in {(m, f) for m, f in bios.GENDER_PAIRS} | {(f, m) for m, f in bios.GENDER_PAIRS}
            for a, b in zip(gendered, swapped))
        non_gendered = [i for i in range(len(ex.input_ids)) if i not in set(ex.evidence.tolist())]
        assert torch.equal(ex.input_ids[non_gendered], sw.input_ids[non_gendered])
        assert _same(tasks.swap_gender(sw), ex) or tasks.swap_gender(sw).text == ex.text  # an involution
    assert any(e.meta["ambiguous"] for e in exs) and not all(e.meta["ambiguous"] for e in exs)


def test_swap_gender_on_plain_text():
    ex = tasks.Example(input_ids=torch.tensor([1]), target=0, evidence=torch.tensor([0]),
                       text="She said her son met Mr. Smith and himself.")
    assert tasks.swap_gender(ex).text == "He said his daughter met Ms. Smith and herself."


def test_sentiment_labels_and_evidence():
    tok = toy_tokenizer("sentiment")
    polar = {**{w: 1 for w in (*sentiment.POSITIVE, *sentiment.POS_VERBS)},
             **{w: 0 for w in (*sentiment.NEGATIVE, *sentiment.NEG_VERBS)},
             **{b: 1 for v, b in sentiment.BASE.items() if v in sentiment.POS_VERBS},
             **{b: 0 for v, b in sentiment.BASE.items() if v in sentiment.NEG_VERBS}}
    exs = tasks.load("sentiment", 300, seed=0)
    assert 0.4 < sum(e.target for e in exs) / len(exs) < 0.6
    assert any(e.meta["negated"] for e in exs) and any(e.meta["clauses"] == 2 for e in exs)
    for ex in exs:
        ev = _words(tok, ex.input_ids[ex.evidence])
        senti = [w for w in ev if w in polar]
        assert len(senti) == 1  # one sentiment word decides, possibly with its negator
        negated = any(w in sentiment.NEGATORS for w in ev)
        assert negated == ex.meta["negated"]
        assert (polar[senti[0]] if not negated else 1 - polar[senti[0]]) == ex.target
        assert ex.meta["sentiment_positions"] and set(ex.evidence.tolist()) <= set(
            ex.meta["sentiment_positions"] + ex.meta["negation_positions"])


def test_other_tokenizer_maps_evidence():
    """A tokenizer that splits words into pieces: evidence covers all pieces of the evidence words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = toy_tokenizer("needle").get_vocab()
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz0123456789.?|")}}
    core = Tokenizer(models.WordPiece(vocab={**vocab, **{f"##{c}": len(vocab) + i for i, c in enumerate(
        "abcdefghijklmnopqrstuvwxyz0123456789")}}, unk_token="[UNK]", max_input_chars_per_word=100))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    chars = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    assert len(base) > 0
    for ex in tasks.load("needle", 3, seed=0, tokenizer=chars, context_length=300, depth=0.3):
        assert len(ex.input_ids) == 300  # exact in the other tokenizer's tokens too
        assert "".join(t.lstrip("#") for t in _words(chars, ex.input_ids[ex.evidence])) == ex.meta["code"]
    for ex in tasks.load("bios", 3, seed=0, tokenizer=chars):
        pieces = "".join(t.lstrip("#") for t in _words(chars, ex.input_ids[ex.evidence]))
        assert pieces == "".join(ex.text.split()[i] for i, _ in ex.meta["swaps"])
        sw = tasks.swap_gender(ex, tokenizer=chars)
        assert sw.meta["gender"] != ex.meta["gender"]
    cop = tasks.load("copying", 2, seed=0, tokenizer=chars, length=6, index=2)
    for ex in cop:
        sym = ex.text.split()[2]
        assert "".join(t.lstrip("#") for t in _words(chars, ex.input_ids[ex.evidence])) == sym
        assert _words(chars, [ex.target])[0] == sym[0]  # the first piece of the symbol to copy


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.load("nope", 1)
    with pytest.raises(ValueError):
        tasks.load("needle", 1, context_length=10)
    with pytest.raises(ValueError):
        tasks.load("needle", 1, context_length=100, depth=1.5)
    with pytest.raises(ValueError):
        tasks.load("bios", 1, gender_correlation=2)
    assert tasks.load("sentiment", 0) == []


def test_word_tokenizer_roundtrip(tmp_path):
    tok = build_word_tokenizer(["Hello", "world", "!", "hello"])
    assert tok.convert_ids_to_tokens([0, 1]) == ["[PAD]", "[UNK]"] and tok.pad_token_id == 0
    ids = tok("hello World !", add_special_tokens=False)["input_ids"]
    assert ids == [2, 3, 4] and tok.decode(ids) == "hello world !"
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("hello world !", add_special_tokens=False)["input_ids"] == ids
    assert again.padding_side == "left" and again("xyz", add_special_tokens=False)["input_ids"] == [1]


# --------------------------------------------------------------------------------- hub loaders
def _write_fixtures(tmp_path):
    """Tiny local copies in the hub datasets' formats (never a download)."""
    import datasets

    sst = {"idx": [0, 1, 2, 3], "sentence": ["a great movie .", "a dull movie .", "so good !", "awful ."],
           "label": [1, 0, 1, 0]}
    features = datasets.Features({"idx": datasets.Value("int32"), "sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(sst, features=features),
                               "train": datasets.Dataset.from_dict(sst, features=features)})
    dd.save_to_disk(str(tmp_path / "sst2_disk"))
    (tmp_path / "sst2_files").mkdir()
    datasets.Dataset.from_dict(sst).to_parquet(str(tmp_path / "sst2_files" / "validation.parquet"))
    datasets.Dataset.from_dict(sst).to_parquet(str(tmp_path / "sst2_files" / "train.parquet"))
    with open(tmp_path / "snli.jsonl", "w") as f:
        for p, h, lab in [("a man sleeps", "a person rests", 0), ("a dog runs", "a cat sits", 2),
                          ("kids play", "kids are outside", 1), ("x", "y", -1)]:
            f.write(json.dumps({"premise": p, "hypothesis": h, "label": lab}) + "\n")
    datasets.Dataset.from_dict({"text": ["i feel happy", "i am scared", "so angry"], "label": [1, 4, 3]}).to_csv(
        str(tmp_path / "emotion.csv"))
    bios_rows = {"hard_text": ["She treats patients after surgery. Her husband is a teacher.",
                               "He counsels clients with anxiety.", "He writes code all day.",
                               "Mr. Lee performs operations; his team trusts him."],
                 "profession": [13, 22, 24, 25], "gender": [1, 0, 0, 0]}
    datasets.Dataset.from_dict(bios_rows).to_parquet(str(tmp_path / "bios.parquet"))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    pytest.importorskip("datasets")
    path = tmp_path_factory.mktemp("hub")
    _write_fixtures(path)
    return path


def test_hub_sst2_from_disk_and_files(fixtures):
    tok = toy_tokenizer("sentiment")
    for source in (fixtures / "sst2_disk", fixtures / "sst2_files"):
        exs = tasks.load("sst2", n=None, seed=0, source=str(source))
        assert sorted(e.text for e in exs) == sorted(["a great movie .", "a dull movie .", "so good !", "awful ."])
        for e in exs:
            assert e.target == {"a great movie .": 1, "a dull movie .": 0, "so good !": 1, "awful .": 0}[e.text]
            assert e.meta["label"] == ("positive" if e.target else "negative")
            assert tok.decode(e.input_ids).replace("[UNK]", "?").count(" ") == len(e.text.split()) - 1
    two = tasks.load("sst2", n=2, seed=1, source=str(fixtures / "sst2_disk"), split="train")
    assert len(two) == 2 and two[0].text == tasks.load("sst2", n=2, seed=1, source=str(fixtures / "sst2_disk"),
                                                       split="train")[0].text


def test_hub_snli_emotion_need_a_tokenizer_and_drop_unlabelled(fixtures):
    with pytest.raises(ValueError, match="tokenizer"):
        tasks.load("snli", n=2, source=str(fixtures / "snli.jsonl"))
    tok = build_word_tokenizer("a man sleeps person rests dog runs cat sits kids play are outside | x y".split())
    snli = tasks.load("snli", n=None, tokenizer=tok, source=str(fixtures / "snli.jsonl"))
    assert len(snli) == 3  # the -1 (no gold label) row is dropped
    by_text = {e.meta["premise"]: e for e in snli}
    assert by_text["a man sleeps"].text == "a man sleeps | a person rests"
    assert by_text["a dog runs"].target == 2 and by_text["a dog runs"].meta["label"] == "contradiction"
    emo = tasks.load("emotion", n=None, tokenizer=tok, source=str(fixtures / "emotion.csv"))
    assert sorted(e.meta["label"] for e in emo) == ["anger", "fear", "joy"]


def test_hub_bios_and_med_bios(fixtures):
    tok = toy_tokenizer("bios")
    full = tasks.load("bias_in_bios", n=None, source=str(fixtures / "bios.parquet"))
    assert sorted(e.meta["label"] for e in full) == ["nurse", "psychologist", "software_engineer", "surgeon"]
    med = tasks.load("med_bios", n=None, source=str(fixtures / "bios.parquet"))
    assert len(med) == 3  # the software engineer is not a medical profession
    nurse = next(e for e in med if e.meta["occupation"] == "nurse")
    assert nurse.target == bios.LABELS.index("nurse") and nurse.meta["gender"] == "female"
    assert _words(tok, nurse.input_ids[nurse.evidence]) == ["she", "her", "husband"]
    swapped = tasks.swap_gender(nurse)
    assert swapped.text.startswith("He treats patients after surgery. His wife")
    assert swapped.meta["gender"] == "male" and swapped.target == nurse.target
    surgeon = next(e for e in med if e.meta["occupation"] == "surgeon")
    assert tasks.swap_gender(surgeon).text == "Ms. Lee performs operations; her team trusts her."


# ------------------------------------------------------------------ layering


@pytest.mark.timeout(30)
def test_tasks_import_neither_zoo_nor_evaluation():
    """zoo uses tasks, never the reverse: no import circle (checked on the source, every import form)."""
    import ast
    from pathlib import Path

    folder = Path(tasks.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not any(part in ("zoo", "evaluation") for part in name.replace(".", " ").split()), \
                    f"{path.name} imports {name}"
