"""`bios`: short biographies of people in five medical occupations, with a controlled gender skew.

The occupation title never appears (as in Bias in Bios, whose title sentence is removed); the text
carries occupation cues, a name, pronouns and other gendered words. Most bios have cues specific
to one occupation. A fraction (`ambiguous`, default 0.2) only has cues shared by two occupations of
opposite majority gender (surgeon/nurse, physician/psychologist, dentist/psychologist): there the
gender is the only thing that tells them apart, so a model trained with `gender_correlation` 0.9 learns
a gender shortcut that `swap_gender` exposes (it flips predictions).

Evidence: the gendered words. meta: gender, occupation, ambiguous, words and the swaps to apply.
"""

from __future__ import annotations

import random

from .text import Encoder, word_example

KIND = "classifier"
LABELS = ("surgeon", "nurse", "dentist", "psychologist", "physician")
# majority gender per occupation, as in Bias in Bios (physician is near parity there; we pick male)
MAJORITY = dict(surgeon="male", nurse="female", dentist="male", psychologist="female", physician="male")
DEFAULTS = dict(gender_correlation=0.9, ambiguous=0.2)

MALE_NAMES = ("james", "john", "robert", "michael", "david", "william", "richard", "thomas", "daniel",
              "mark", "paul", "steven", "andrew", "peter", "george", "kevin")
FEMALE_NAMES = ("mary", "patricia", "jennifer", "linda", "elizabeth", "susan", "jessica", "sarah",
                "karen", "nancy", "lisa", "emily", "laura", "anna", "helen", "julia")
SURNAMES = ("smith", "jones", "brown", "miller", "davis", "garcia", "wilson", "moore", "taylor", "clark",
            "lee", "walker")
# (male, female) word pairs; "her" maps back to "his" (possessive) unless the generator says "him"
GENDER_PAIRS = (("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("mr", "ms"),
                ("father", "mother"), ("son", "daughter"), ("husband", "wife"), ("brother", "sister"),
                ("man", "woman"), ("men", "women"), ("boy", "girl"), ("male", "female"), ("mr", "mrs"),
                *zip(MALE_NAMES, FEMALE_NAMES))
SWAP = {}
for _m, _f in GENDER_PAIRS:
    SWAP.setdefault(_m, _f)
    SWAP.setdefault(_f, _m)

SPECIFIC = dict(
    surgeon=("performs complex operations", "specializes in laparoscopic surgery",
             "has completed hundreds of transplants", "leads the surgical team in the operating theatre",
             "repairs injured joints and bones", "trained in cardiac surgery"),
    nurse=("provides bedside care on the night shift", "holds a nursing degree",
           "gives medication to patients on the ward", "coordinates triage in the emergency department",
           "changes wound dressings and checks vital signs", "supports patients and families through recovery"),
    dentist=("treats cavities and gum disease", "specializes in root canals", "fits braces and crowns",
             "teaches children about oral hygiene", "performs teeth whitening", "runs a dental practice"),
    psychologist=("offers therapy for anxiety and depression", "specializes in cognitive behavioral therapy",
                  "counsels clients through trauma", "studies human behavior and memory",
                  "runs group therapy sessions", "helps clients with their mental wellbeing"),
    physician=("diagnoses chronic illness", "practices internal medicine", "specializes in primary care",
               "writes prescriptions and orders lab tests", "works in family medicine",
               "manages diabetes and heart disease"),
)
# cues that two occupations of opposite majority gender share
SHARED = (
    (("surgeon", "nurse"), ("works long shifts at the hospital", "spends most days in the operating room",
                            "cares for patients after surgery", "is part of the hospital staff")),
    (("physician", "psychologist"), ("sees many patients at the clinic", "receives referrals from other doctors",
                                     "treats patients with sleep problems", "works at a busy outpatient clinic")),
    (("dentist", "psychologist"), ("runs a small private practice", "sees clients by appointment",
                                   "has an office downtown", "keeps a calm waiting room for visitors")),
)
CITIES = ("boston", "chicago", "denver", "seattle", "austin", "portland", "atlanta", "phoenix")
YEARS = ("two", "five", "ten", "twelve", "fifteen", "twenty")
HOBBIES = ("hiking", "cooking", "painting", "running", "reading", "gardening", "chess", "music")
TRAITS = ("patient", "careful", "kind", "calm", "thorough", "friendly")


def vocabulary() -> list[str]:
    words = [*LABELS, *MALE_NAMES, *FEMALE_NAMES, *SURNAMES, *SWAP, *CITIES, *YEARS, *HOBBIES, *TRAITS, "dr", "."]
    for phrases in (*SPECIFIC.values(), *(p for _, p in SHARED)):
        for p in phrases:
            words += p.split()
    words += ("has worked in for years is a of two three lives in with family in free time enjoys "
              "colleagues describe as and").split()
    return words


def _cues(rng: random.Random, occupation: str, ambiguous: bool) -> list[str]:
    pools = [phrases for occs, phrases in SHARED if occupation in occs]
    if ambiguous:
        pool = rng.choice(pools)
        return rng.sample(pool, rng.randint(1, 2))
    specific = rng.sample(SPECIFIC[occupation], rng.randint(1, 2))
    if rng.random() < 0.5:  # shared cues also appear in clear bios, so they are not a class signal alone
        specific.insert(rng.randrange(len(specific) + 1), rng.choice(rng.choice(pools)))
    return specific


def _bio(rng: random.Random, label: int, gender: str, ambiguous: bool):
    """Words of one bio and the swaps that flip its gender: [(word index, counterpart), ...]."""
    male = gender == "male"
    k = rng.randrange(len(MALE_NAMES))
    name = (MALE_NAMES if male else FEMALE_NAMES)[k]
    he, his, him = ("he", "his", "him") if male else ("she", "her", "her")
    words, swaps = [], []

    def say(*parts):  # parts: plain words, or (word, counterpart) for gendered words
        for p in parts:
            if isinstance(p, tuple):
                swaps.append((len(words), p[1]))
                p = p[0]
            words.extend(p.split())

    def g(word, other=None):  # a gendered word and what it becomes when the gender is swapped
        return (word, other or SWAP[word])

    title = rng.random() < 0.3
    say(*((g("mr" if male else "ms"),) if title else ()), g(name), rng.choice(SURNAMES),
        "has worked in", rng.choice(CITIES), "for", rng.choice(YEARS), "years .")
    personal = [
        lambda: say(g(he), "is a", g("father" if male else "mother"), "of", rng.choice(("two", "three")), "."),
        lambda: say("in", g(his, "his" if not male else "her"), "free time", g(he), "enjoys", rng.choice(HOBBIES), "."),
        lambda: say(g(he), "lives in", rng.choice(CITIES), "with", g(his, "his" if not male else "her"), "family ."),
        lambda: say("colleagues describe", g(him, "him" if not male else "her"), "as", rng.choice(TRAITS), "."),
    ]
    rng.shuffle(personal)
    for i, cue in enumerate(_cues(rng, LABELS[label], ambiguous)):
        say(g(he), cue, ".")
        if i < 2 and rng.random() < 0.7:
            personal.pop()()
    return words, swaps


def example(rng: random.Random, enc: Encoder, gender_correlation: float = 0.9, ambiguous: float = 0.2,
            label: int | None = None, gender: str | None = None):
    if not 0.0 <= gender_correlation <= 1.0 or not 0.0 <= ambiguous <= 1.0:
        raise ValueError("gender_correlation and ambiguous must be in [0, 1]")
    label = rng.randrange(len(LABELS)) if label is None else int(label)
    occupation = LABELS[label]
    if gender is None:
        majority = MAJORITY[occupation]
        gender = majority if rng.random() < gender_correlation else ("female" if majority == "male" else "male")
    if gender not in ("male", "female"):
        raise ValueError(f"gender must be 'male' or 'female', got {gender!r}")
    is_ambiguous = rng.random() < ambiguous
    words, swaps = _bio(rng, label, gender, is_ambiguous)
    return word_example(
        words, label, enc, evidence=[i for i, _ in swaps],
        meta=dict(gender=gender, occupation=occupation, label=occupation, ambiguous=is_ambiguous,
                  words=words, swaps=swaps, tokenizer=enc.tokenizer.name_or_path or "toy/bios"),
    )


def lexicon_swaps(words) -> list[tuple[int, str]]:
    """Swaps for any text (e.g. a real biography): gendered words of the lexicon, case and trailing
    punctuation kept. Possessive/object "her" is ambiguous in general text; it becomes "his"."""
    swaps = []
    for i, w in enumerate(words):
        core = w.rstrip(".,;:!?'\")")
        lead = core.lstrip("\"'(")
        other = SWAP.get(lead.lower())
        if other is None:
            continue
        if lead[:1].isupper():
            other = other.capitalize()
        swaps.append((i, w[: len(core) - len(lead)] + other + w[len(core):]))
    return swaps


def swap_gender(example, tokenizer=None):
    """The same example with every gendered word swapped (he <-> she, names, ...), re-tokenized.

    `tokenizer`: the one the example was made with (default: the toy bios tokenizer, or the one named
    in meta["tokenizer"]). The label stays; meta["gender"] flips; evidence follows the swapped words.
    """
    from .tokenizers import toy_tokenizer

    meta = dict(example.meta)
    words = meta.get("words") or (example.text or "").split()
    if not words:
        raise ValueError("swap_gender needs an example with text (meta['words'] or text)")
    swaps = meta.get("swaps")
    if swaps is None:
        swaps = lexicon_swaps(words)
    if tokenizer is None:
        name = meta.get("tokenizer") or "toy/bios"
        if name.startswith("toy/") or not name:
            tokenizer = toy_tokenizer(name[4:] if name.startswith("toy/") else "bios")
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name)
    new_words = list(words)
    back = []
    for i, other in swaps:
        back.append((i, new_words[i]))
        new_words[i] = other
    gender = meta.get("gender")
    meta.update(words=new_words, swaps=back, swapped=not meta.get("swapped", False),
                gender={"male": "female", "female": "male"}.get(gender, gender))
    groups = {k[: -len("_positions")]: None for k in meta if k.endswith("_positions")}
    for k in groups:
        meta.pop(f"{k}_positions")  # word-level groups are not kept through a swap
    return word_example(new_words, example.target, Encoder(tokenizer), evidence=[i for i, _ in swaps], meta=meta)
