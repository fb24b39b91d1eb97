"""Evaluation library: metrics on hand-built cases with known answers, resumable runs, the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mambalrp_tools as mlt
from mambalrp_tools import evaluation as ev
from mambalrp_tools.evaluation import runs
from mambalrp_tools.evaluation.bias import paired_tests
from mambalrp_tools.evaluation.faithfulness import curve_masks, perturbation_curves, step_counts
from mambalrp_tools.evaluation.long_range import top_k_distances
from mambalrp_tools.tasks.base import Example

from conftest import child_env, tiny_config, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """The machines are shared: one thread is many times faster than two under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ hand-built model with known answers


class Additive(nn.Module):
    """logits[b, t] = sum_{s <= t} W[ids_s]: the exact relevance of token s for class c is W[ids_s, c].

    Token 0 (pad) has a zero row, so replacing by pad, zeroing the embedding and deleting a token all
    remove exactly its contribution."""

    def __init__(self, vocab=30, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, classes)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab, classes, generator=g))
            self.emb.weight[0].zero_()
        self.head = nn.Linear(classes, classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(classes))
        self.config = SimpleNamespace(pad_token_id=0, _name_or_path="additive")

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **kw):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:
            e = e * attention_mask[..., None]
        return SimpleNamespace(logits=self.head(e).cumsum(1))


def contributions(model, ids, target):
    return model.emb.weight[ids, target].detach()


def perfect(model, ids, target, mask):
    return torch.stack([contributions(model, ids[i], int(target[i])) for i in range(ids.shape[0])])


def reversed_(model, ids, target, mask):
    return -perfect(model, ids, target, mask)


def noise(model, ids, target, mask):
    g = torch.Generator().manual_seed(int(ids.sum()))
    return torch.randn(ids.shape, generator=g)


def additive_examples(n=12, T=10, vocab=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (T,), generator=g)
        out.append(Example(ids, int(torch.randint(0, 3, (1,), generator=g)), torch.tensor([0])))
    return out


# ------------------------------------------------------------------ method specs


def test_method_specs():
    assert ev.parse_method("mambalrp").label == "mambalrp"
    abl = ev.parse_method("mambalrp:-ssm")
    assert abl.name == "mambalrp" and abl.kwargs == {"rules": {"ssm": False}}
    assert ev.parse_method(("mambalrp", {"ssm": False})).label == "mambalrp:-ssm"
    assert ev.parse_method("mambalrp:-ssm-gate").label == ev.parse_method("mambalrp:-gate:-ssm").label
    assert ev.parse_method("mambalrp:+ssm").label == "mambalrp"  # on is the default
    assert ev.parse_method("gi").label == "gradient_x_input"
    assert ev.parse_method("random:seed=3").kwargs == {"seed": 3}
    assert [s.label for s in ev.parse_methods("mambalrp,mambalrp:-norm,gi")] == \
        ["mambalrp", "mambalrp:-norm", "gradient_x_input"]
    with pytest.raises(ValueError, match="unknown MambaLRP rule"):
        ev.parse_method("mambalrp:-sssm")
    with pytest.raises(ValueError, match="mambalrp"):
        ev.parse_method("gradient:-ssm")
    with pytest.raises(ValueError, match="unknown method"):
        ev.parse_method("nonsense")
    with pytest.raises(ValueError, match="twice"):
        ev.parse_methods("gi,gradient_x_input")


# ------------------------------------------------------------------ faithfulness: known answers


def test_step_counts_and_masks():
    assert step_counts(10, 20) == list(range(11))  # fewer tokens than steps: every token
    assert step_counts(100, 4) == [0, 25, 50, 75, 100]
    x, masks = curve_masks(torch.tensor([0.5, 3.0, -1.0, 2.0]), steps=10)
    assert x == [0, 0.25, 0.5, 0.75, 1.0]
    assert masks["morf"][1].tolist() == [True, False, True, True]  # most relevant (3.0) removed first
    assert masks["lerf"][1].tolist() == [True, True, False, True]  # least relevant (-1.0) removed first
    assert masks["ins_morf"][1].tolist() == [False, True, False, False]
    assert masks["ins_lerf"][0].tolist() == [False] * 4 and masks["ins_lerf"][-1].all()


def test_perturbation_curves_known_answers():
    w = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.0, 0.25, 1.5, -0.5], dtype=torch.float64)

    def score(keep):  # additive: f = sum of the present tokens' contributions
        return (keep.double() * w).sum(-1)

    best = perturbation_curves(score, w)
    rev = perturbation_curves(score, -w)
    # perfect: MoRF drops fastest; the exact areas for this w (T = 8, x = k/8)
    assert best["morf"][0] == pytest.approx(float(w.sum())) and best["morf"][-1] == pytest.approx(0.0)
    assert best["lerf"][1] == pytest.approx(float(w.sum() + 2.0))
    assert rev["delta_af"] == pytest.approx(-best["delta_af"], abs=1e-12)
    assert best["delta_ins"] == pytest.approx(best["delta_af"])  # same inputs with a replacement token
    g = torch.Generator().manual_seed(0)
    randoms = [perturbation_curves(score, torch.randn(8, generator=g, dtype=torch.float64))["delta_af"]
               for _ in range(200)]
    # with an additive f the relevance order is optimal: no random order beats it, none is worse than reversed
    assert max(randoms) <= best["delta_af"] + 1e-9 and min(randoms) >= rev["delta_af"] - 1e-9
    assert abs(sum(randoms) / len(randoms)) < 0.15 * best["delta_af"]  # random is centred near 0


@pytest.mark.parametrize("replacement", ["pad", "zero", "delete", 0])
def test_faithfulness_on_hand_built_model(replacement):
    model = Additive()
    exs = additive_examples()
    res = ev.faithfulness(model, exs, [("perfect", perfect), ("reversed", reversed_), ("random", noise)],
                          replacement=replacement, target="label", progress=False)
    s = res.summary["methods"]
    assert s["perfect"]["delta_af"] > 0.5
    assert s["reversed"]["delta_af"] == pytest.approx(-s["perfect"]["delta_af"], abs=1e-5)
    assert s["reversed"]["delta_af"] < s["random"]["delta_af"] < s["perfect"]["delta_af"]
    assert res.summary["ranking_delta_af"] == ["perfect", "random", "reversed"]
    for r in res.records:  # f at x = 0 is the unperturbed logit, at x = 1 nothing is left (pad row is 0)
        assert r["morf"][0] == pytest.approx(r["f"], abs=1e-5)
        assert r["morf"][-1] == pytest.approx(0.0, abs=1e-5)
        assert r["x"][0] == 0 and r["x"][-1] == 1
    assert len(res.records) == 3 * len(exs)
    assert {r["sample"] for r in res.records} == set(range(len(exs)))


def test_faithfulness_unk_needs_a_token():
    with pytest.raises(ValueError, match="unk"):
        ev.faithfulness(Additive(), additive_examples(2), [("perfect", perfect)], replacement="unk", progress=False)


def test_faithfulness_on_tiny_mamba_with_ablation():
    model = tiny_model("mamba", seed=0)
    g = torch.Generator().manual_seed(0)
    # 16 tokens, one removed per step: long enough for the ssm rule to reorder tokens on this tiny model
    exs = [Example(torch.randint(1, 97, (16,), generator=g), 1, torch.tensor([0])) for _ in range(2)]
    res = ev.faithfulness(model, exs, ["mambalrp", "mambalrp:-ssm", "random"], replacement="pad", steps=16,
                          progress=False)
    assert [r["method"] for r in res.records].count("mambalrp:-ssm") == 2
    for r in res.records:
        assert len(r["x"]) == 17 and math.isfinite(r["delta_af"])
        assert r["morf"][0] == pytest.approx(r["f"], rel=1e-4, abs=1e-4)  # patched and plain forward agree
    assert set(res.summary["methods"]) == {"mambalrp", "mambalrp:-ssm", "random"}
    # the ablation is really run: -ssm gives other relevance, hence another token order and curve
    for ex in exs:
        full = mlt.explain(model, ex.input_ids, method="mambalrp").relevance
        ablated = mlt.explain(model, ex.input_ids, method="mambalrp", rules={"ssm": False}).relevance
        assert not torch.allclose(full, ablated, rtol=1e-3, atol=1e-6)  # float noise is ~1e-7 here
    by = {(r["sample"], r["method"]): r for r in res.records}
    assert any(by[(i, "mambalrp")]["morf"] != by[(i, "mambalrp:-ssm")]["morf"] for i in range(len(exs)))
    fig = res.plot()
    assert len(fig.axes) == 2
    # one line per method and curve kind (MoRF, LeRF) in each panel
    assert [len(ax.lines) for ax in fig.axes] == [6, 6]


# ------------------------------------------------------------------ alignment, needle, long range, bias


def test_alignment_scores_known_answers():
    ev_pos, cand = torch.tensor([3]), torch.arange(0, 6)
    good = torch.tensor([0.1, 0.2, 0.0, 5.0, 0.3, 0.1, 9.0])  # position 6 is outside the candidates
    s = ev.alignment_scores(good, ev_pos, cand)
    assert s["auc"] == 1.0 and s["top1"] == 1.0 and s["top1_position"] == 3
    s = ev.alignment_scores(-good, ev_pos, cand)
    assert s["auc"] == 0.0 and s["top1"] == 0.0
    flat = ev.alignment_scores(torch.zeros(7), ev_pos, cand)  # ties: chance, and no free top-1 hit
    assert flat["auc"] == 0.5 and flat["top1"] == 0.0
    g = torch.Generator().manual_seed(0)
    aucs = [ev.alignment_scores(torch.randn(7, generator=g), ev_pos, cand)["auc"] for _ in range(400)]
    assert abs(sum(aucs) / len(aucs) - 0.5) < 0.05


def test_roc_auc_matches_pair_counting():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (40,), generator=g).tolist()  # many ties
    pos = (torch.rand(40, generator=g) < 0.3).tolist()
    pairs = [(a, b) for a, pa in zip(scores, pos) if pa for b, pb in zip(scores, pos) if not pb]
    brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert ev.roc_auc(scores, pos) == pytest.approx(brute)


def test_copy_alignment_end_to_end():
    model = Additive(vocab=30, classes=30)
    exs = []
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = torch.randperm(29, generator=g)[:8] + 1
        exs.append(Example(ids, int(ids[2]), torch.tensor([2]), torch.arange(6)))
    res = ev.copy_alignment(model, exs, [("perfect", perfect), ("reversed", reversed_), ("random", noise)],
                            progress=False)
    s = res.summary["methods"]
    assert s["reversed"]["auc"] == pytest.approx(1 - s["perfect"]["auc"])
    for r in res.records:
        assert 0 <= r["auc"] <= 1 and r["top1"] in (0.0, 1.0)
    mat = res.summary["matrices"]["perfect"]  # one whole copy: 6 source symbols x 6 source positions
    assert len(mat["relevance"]) == 6 and len(mat["relevance"][0]) == 6 and mat["source_positions"] == list(range(6))
    assert set(res.figures()) == {"alignment", "alignment_matrix"}


def test_needle_share_and_grid():
    assert ev.needle_share(torch.tensor([1.0, -5.0, 3.0, 0.0]), torch.tensor([2])) == pytest.approx(0.75)
    model = Additive(vocab=30, classes=30)

    def make(L, d, n, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            ids = torch.randint(1, 30, (L,), generator=g)
            at = min(L - 1, int(d * (L - 1)))
            out.append(Example(ids, int(ids[at]), torch.tensor([at])))
        return out

    res = ev.needle_grid(model, [6, 8], [0.0, 1.0], [("perfect", perfect)], n=3, make_examples=make,
                         progress=False)
    assert len(res.records) == 2 * 2 * 3
    assert res.cell_table("perfect", "accuracy").shape == (2, 2)
    fig = res.plot("perfect")
    assert len(fig.axes) >= 2


def test_top_k_distances():
    rel = torch.tensor([5.0, 0.0, 1.0, 4.0, 0.5])
    assert top_k_distances(rel, 2) == [1, 4]  # positions 3 and 0, explained at 4
    assert top_k_distances(rel, 10) == [0, 1, 2, 3, 4]
    assert top_k_distances(rel, 1, position=2) == [2]  # later tokens are not seen
    res = ev.long_range(Additive(), additive_examples(4), k=3, methods=[("perfect", perfect)], target="label",
                        progress=False)
    assert all(len(r["distances"]) == 3 and max(r["distances"]) <= 9 for r in res.records)


def test_paired_tests():
    a = [0.9, 0.8, 0.85, 0.95, 0.7, 0.88, 0.91, 0.8, 0.83, 0.9, 0.86, 0.92]
    b = [v - 0.3 + 0.01 * i for i, v in enumerate(a)]
    t = paired_tests(a, b)
    assert t["wilcoxon_p"] < 0.01 and t["ttest_p"] < 0.01 and t["mean_diff"] > 0.2
    assert math.isnan(paired_tests(a, a)["wilcoxon_p"])


def test_gender_bias_on_hand_built_shortcut():
    """Token 1 = 'he', 2 = 'she'; the model pushes class 0 for 'he' and class 1 for 'she'."""
    model = Additive(vocab=12, classes=2)
    with torch.no_grad():
        model.emb.weight[3:] *= 0.1
        model.emb.weight[1] = torch.tensor([3.0, -3.0])
        model.emb.weight[2] = torch.tensor([-3.0, 3.0])
    g = torch.Generator().manual_seed(0)
    exs = []
    for i in range(16):
        gender = "male" if i % 4 else "female"
        label = 0 if i % 2 else 1
        ids = torch.randint(3, 12, (7,), generator=g)
        ids[2] = 1 if gender == "male" else 2
        exs.append(Example(ids, label, torch.tensor([2]), meta={"gender": gender, "occupation": f"job{label}"}))

    def swap(ex):
        ids = ex.input_ids.clone()
        ids[2] = 3 - ids[2]
        return Example(ids, ex.target, ex.evidence, meta={**ex.meta, "gender": "x"})

    res = ev.gender_bias(model, exs, [("perfect", perfect)], swap=swap, min_count=1, progress=False)
    cf = res.summary["counterfactual"]
    assert cf["stereotype"]["mean_diff"] > 0.5 and cf["stereotype"]["wilcoxon_p"] < 0.01
    assert cf["flip_rate"] > 0.5
    rel = res.summary["gendered_relevance"]
    assert rel["job0"]["male"]["mean"] == pytest.approx(3.0) and rel["job1"]["male"]["mean"] == pytest.approx(-3.0)
    top = res.summary["top_tokens"]["perfect"]
    assert top["job0"][0]["token"] == "1" and top["job1"][0]["token"] == "2"
    res.plot()


# ------------------------------------------------------------------ conservation, randomisation, generation


def test_conservation_mambalrp_vs_gi(arch):
    model = tiny_model(arch, seed=0, zero_biases=True)
    g = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(1, 97, (8 + i % 2,), generator=g), 3, torch.tensor([0])) for i in range(4)]
    res = ev.conservation(model, exs, ["mambalrp", "gi"], batch_size=2, progress=False)
    s = res.summary["methods"]
    assert s["mambalrp"]["max_rel_error"] < 1e-4
    assert s["gradient_x_input"]["median_rel_error"] > 1e-2
    one = ev.conservation(model, exs, ["mambalrp"], progress=False)  # batching changes no number
    a = {r["sample"]: r["sum_r"] for r in res.records if r["method"] == "mambalrp"}
    b = {r["sample"]: r["sum_r"] for r in one.records}
    assert all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)
    assert len(res.plot().axes) == 2


def test_randomization_check():
    model = tiny_model("mamba", seed=0)
    g = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(1, 97, (10,), generator=g), 1, torch.tensor([0])) for _ in range(2)]
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    res = ev.randomization_check(model, exs, ["mambalrp", "random"], progress=False)
    assert all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())  # trained model untouched
    names = res.summary["stages"]
    assert names[0] == "trained" and names[1] == "head" and names[-1] == "embeddings"
    rnd = res.summary["methods"]["random"]["spearman"]
    assert rnd == pytest.approx([1.0] * len(names))  # ignores the model: fails the sanity check, as it should
    lrp = res.summary["methods"]["mambalrp"]["spearman"]
    assert lrp[0] == 1.0 and min(lrp[1:]) < 0.9


def test_explain_generation_equals_single_explanations(arch):
    model = tiny_model(arch, seed=1)
    prompt = torch.randint(1, 97, (6,), generator=torch.Generator().manual_seed(0))
    gen = ev.explain_generation(model, prompt, max_new_tokens=4, batch_size=3)
    assert isinstance(gen, mlt.Explanation) and ev.GenerationExplanation is mlt.Explanation
    assert gen.relevance.shape == (1, 4, 10) and gen.token_attr.shape == (4, 6)
    assert gen.output_positions.tolist() == [5, 6, 7, 8] and gen.n_prompt == 6
    with torch.no_grad():  # greedy outputs are the model's argmax
        logits = model(gen.input_ids).logits[0]
    assert torch.equal(logits[5:9].argmax(-1), gen.output_ids)
    for j in range(4):
        p = 6 + j
        single = mlt.explain(model, gen.input_ids[:, :p], target=int(gen.input_ids[0, p]))
        assert torch.allclose(gen.relevance[0, j, :p], single.relevance[0], atol=1e-5)
        assert float(gen.logits[j]) == pytest.approx(float(single.logit[0]), rel=1e-5)
        assert not gen.relevance[0, j, p:].any()
        torch.testing.assert_close(gen.output(j).relevance, single.relevance, atol=1e-5, rtol=0)
    given = ev.explain_generation(model, prompt, target_ids=[5, 6], method="mambalrp:-ssm")
    assert given.method == "mambalrp:-ssm" and given.output_ids.tolist() == [5, 6]
    assert given.info["rules"] == {"silu": True, "ssm": False, "gate": True, "norm": True}
    ax = gen.plot()
    assert ax.images[0].get_array().shape == (4, 6)  # output token x prompt token


# ------------------------------------------------------------------ runs


def _no_pickle(folder: Path):
    for p in folder.rglob("*"):
        if p.is_file():
            assert p.suffix not in (".pkl", ".pickle", ".pt", ".pth", ".npy", ".joblib"), p
            head = p.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), f"{p} looks like a pickle"


def test_run_resume_skips_finished_and_never_rewrites(tmp_path):
    model, exs = Additive(), additive_examples(6)
    calls = []

    def counted(model, ids, target, mask):
        calls.append(int(ids.sum()))
        return perfect(model, ids, target, mask)

    out = tmp_path / "run"
    first = ev.faithfulness(model, exs[:6], [("p", counted)], replacement="pad", out=out, progress=False)
    lines = (out / runs.RECORDS).read_bytes()
    assert len(calls) == 6 and len(lines.splitlines()) == 6
    manifest = json.loads((out / runs.MANIFEST).read_text())
    assert manifest["analysis"] == "faithfulness" and manifest["params"]["replacement"] == "pad"
    assert manifest["versions"]["torch"] and manifest["n"] == 6
    again = ev.faithfulness(model, exs[:6], [("p", counted)], replacement="pad", out=out, progress=False)
    assert len(calls) == 6  # nothing recomputed
    assert (out / runs.RECORDS).read_bytes() == lines
    assert again.summary == first.summary
    # a torn last line (kill mid-write) is dropped and that sample recomputed, once
    with open(out / runs.RECORDS, "rb+") as fh:
        fh.truncate(len(lines) - 7)
    ev.faithfulness(model, exs[:6], [("p", counted)], replacement="pad", out=out, progress=False)
    recs = runs.read_records(out)
    assert len(calls) == 7 and sorted(r["sample"] for r in recs) == list(range(6))
    assert (out / runs.RECORDS).read_bytes()[: len(lines) - 200] == lines[: len(lines) - 200]
    _no_pickle(out)


def test_run_mismatch_refused_unless_overwrite(tmp_path):
    model, exs = Additive(), additive_examples(3)
    out = tmp_path / "run"
    ev.faithfulness(model, exs, [("perfect", perfect)], replacement="pad", out=out, progress=False)
    with pytest.raises(ev.RunMismatch, match="params.*overwrite"):
        ev.faithfulness(model, exs, [("perfect", perfect)], replacement="zero", out=out, progress=False)
    with pytest.raises(ev.RunMismatch, match="examples"):
        ev.faithfulness(model, additive_examples(3, seed=9), [("perfect", perfect)], replacement="pad", out=out,
                        progress=False)
    with pytest.raises(ev.RunMismatch, match="analysis"):
        ev.conservation(model, exs, [("perfect", perfect)], out=out, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ev.RunMismatch, match="no manifest"):
        ev.conservation(model, exs, [("perfect", perfect)], out=tmp_path / "junk", progress=False)
    res = ev.faithfulness(model, exs, [("perfect", perfect)], replacement="zero", out=out, overwrite=True,
                          progress=False)
    assert len(runs.read_records(out)) == 3 and res.params["replacement"] == "zero"
    assert json.loads((out / runs.MANIFEST).read_text())["params"]["replacement"] == "zero"
    (out / "marker.txt").write_text("from before")
    ev.faithfulness(model, exs, [("perfect", perfect)], replacement="zero", out=out, progress=False)
    assert (out / "marker.txt").exists()  # same evaluation: resumed in place
    ev.faithfulness(model, exs, [("perfect", perfect)], replacement="zero", out=out, overwrite=True, progress=False)
    assert not (out / "marker.txt").exists() and len(runs.read_records(out)) == 3  # overwrite: afresh


def test_run_lock_and_write_rules(tmp_path):
    ident = {"analysis": "x", "model": "m", "examples": "e", "methods": [], "params": {}}
    with runs.Run(tmp_path / "r", ident) as run:
        with pytest.raises(ev.RunLocked):
            runs.Run(tmp_path / "r", ident)
        run.write({"sample": 0, "method": "a", "v": 1})
        with pytest.raises(ValueError, match="never rewritten"):
            run.write({"sample": 0, "method": "a", "v": 2})
        with pytest.raises(ValueError, match="sample"):
            run.write({"method": "a"})
    with runs.Run(tmp_path / "r", ident) as run:  # lock released on close
        assert run.done(0, "a") and not run.done(1, "a") and run.records[0]["v"] == 1


def test_lines_written_reads_only_what_was_appended(tmp_path):
    """What rank 0's progress bar counts while the other ranks write (and while it waits for them)."""
    ident = {"analysis": "x", "model": "m", "examples": "e", "methods": [], "params": {}}
    with runs.Run(tmp_path / "r", ident) as run:
        assert run.lines_written() == 0
        run.write({"sample": 0, "method": "a"})
        other = tmp_path / "r" / runs.RANK_RECORDS.format(1)  # another rank's file, its last line torn
        other.write_text('{"sample": 1, "method": "a"}\n{"sample": 2, "met')
        assert run.lines_written() == 2
        with open(other, "a") as fh:
            fh.write('hod": "a"}\n')
        assert run.lines_written() == 3
        other.write_text('{"sample": 3, "method": "a"}\n')  # a new, shorter file under that name
        assert run.lines_written() == 2


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from conftest import tiny_model
    from mambalrp_tools import evaluation as ev
    from mambalrp_tools.tasks.base import Example

    def slow(model, ids, target, mask):   # a method slow enough that the kill lands mid-run
        time.sleep(0.15)
        return torch.arange(ids.shape[1], dtype=torch.float32).expand(ids.shape).clone()

    model = tiny_model("mamba", seed=0, zero_biases=True)
    g = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(1, 97, (6 + i % 3,), generator=g), 1, torch.tensor([0])) for i in range(12)]
    ev.conservation(model, exs, ["mambalrp", ("slow", slow)], out=sys.argv[1], progress=False)
    print("DONE")
""")


def test_resume_after_kill(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT.format(tests=str(ROOT / "tests")))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    records = out / runs.RECORDS
    deadline = time.time() + 240
    while time.time() < deadline:  # mambalrp finishes its 12 quickly; kill during the slow method
        if records.exists() and len(records.read_bytes().splitlines()) >= 15:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records.read_bytes()
    n_before = len(before.splitlines())
    assert 15 <= n_before < 24, "the kill must land mid-run"
    done = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr[-2000:]
    after = records.read_bytes()
    keep = before[: before.rfind(b"\n") + 1]
    assert after.startswith(keep)  # what was written before the kill is untouched
    recs = runs.read_records(out)
    pairs = [(r["sample"], r["method"]) for r in recs]
    assert len(pairs) == len(set(pairs)) == 24  # no duplicate, no lost row
    assert set(pairs) == {(i, m) for i in range(12) for m in ("mambalrp", "slow")}
    summary = json.loads((out / runs.SUMMARY).read_text())
    assert summary["methods"]["mambalrp"]["n"] == 12
    _no_pickle(out)


# ------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny random classifier and a word-level tokenizer saved as a model folder, plus a task file."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 40)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(d)
    config = tiny_config("mamba", vocab_size=40, num_labels=2, pad_token_id=0)
    torch.manual_seed(0)
    mlt.make_classifier(config).save_pretrained(d)
    g = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(2, 40, (7,), generator=g), i % 2, torch.tensor([1]), torch.arange(4))
           for i in range(4)]
    ev.save_examples(exs, d / "task.jsonl")
    return d


def _cli(*argv):
    from mambalrp_tools.cli import main

    return main(["evaluate", *argv])


def test_cli_smoke_tiny_model(saved_tiny, tmp_path, capsys):
    out = tmp_path / "faith"
    args = ["faithfulness", "--model", str(saved_tiny), "--task", str(saved_tiny / "task.jsonl"),
            "--methods", "mambalrp,mambalrp:-ssm,gi,random", "--n", "3", "--steps", "4", "--out", str(out), "--quiet"]
    assert _cli(*args) == 0
    printed = capsys.readouterr().out
    assert "mambalrp:-ssm" in printed and "delta_af" in printed
    recs = runs.read_records(out)
    assert len(recs) == 12 and {r["method"] for r in recs} == {"mambalrp", "mambalrp:-ssm", "gradient_x_input",
                                                                   "random"}
    manifest = json.loads((out / runs.MANIFEST).read_text())
    assert manifest["task"].endswith("task.jsonl") and manifest["params"]["replacement_id"] == 1  # [UNK]
    assert (out / "figures" / "faithfulness.png").is_file() and (out / "figures" / "faithfulness.pdf").is_file()
    assert _cli(*args) == 0  # resumes: nothing new
    assert runs.read_records(out) == recs
    assert _cli(*[a if a != "4" else "5" for a in args]) == 2  # another command: refused
    assert "overwrite" in capsys.readouterr().err
    assert _cli(*[a if a != "4" else "5" for a in args], "--overwrite") == 0
    for analysis in ("conservation", "long-range", "randomization"):
        o = tmp_path / analysis
        assert _cli(analysis, "--model", str(saved_tiny), "--task", str(saved_tiny / "task.jsonl"), "--n", "2",
                    "--out", str(o), "--quiet", "--no-figures") == 0
        assert len(runs.read_records(o)) >= 2
        _no_pickle(o)
    _no_pickle(out)


TOYS = Path(mlt.models.TOY_DIR)


def _toy(name):
    return (TOYS / name / "config.json").is_file()


@pytest.mark.parametrize("analysis,model,extra", [
    ("alignment", "toy/copying", ["--methods", "mambalrp,random", "--task-param", "max_length=12"]),
    ("faithfulness", "toy/sentiment", ["--methods", "mambalrp,mambalrp:-gate", "--steps", "4"]),
    ("bias", "toy/bios", []),
    ("needle", "toy/needle", ["--context-lengths", "64", "--depths", "0.5", "--methods", "mambalrp"]),
])
def test_cli_smoke_toy_models(analysis, model, extra, tmp_path):
    if not _toy(model[len("toy/"):]):
        pytest.skip(f"{model} is not shipped yet")
    out = tmp_path / "run"
    assert _cli(analysis, "--model", model, "--n", "2", "--out", str(out), "--quiet", *extra) == 0
    recs = runs.read_records(out)
    assert recs and all("sample" in r and "method" in r for r in recs)
    assert (out / runs.SUMMARY).is_file() and list((out / "figures").glob("*.png"))
    _no_pickle(out)


def test_faithfulness_paired_differences():
    res = ev.faithfulness(Additive(), additive_examples(6), [("perfect", perfect), ("reversed", reversed_)],
                          replacement="pad", target="label", progress=False)
    d = res.summary["paired_vs_first"]["reversed"]
    assert d["n"] == 6 and d["delta_af_diff"] == pytest.approx(2 * res.summary["methods"]["perfect"]["delta_af"])
    assert d["wilcoxon_p"] < 0.05


# ------------------------------------------------------------------ where mamba-ssm is installed

STANDINS = ROOT / "tests" / "standin_kernels"


@pytest.mark.timeout(300)
def test_evaluation_of_cpu_model_where_mamba_ssm_is_installed(tmp_path):
    """With (stand-in) mamba_ssm and causal_conv1d importable, transformers' own forward of a CPU model
    reaches their kernels and fails; every analysis still runs, because the package's forwards are its own."""
    script = textwrap.dedent("""
        import torch
        import mambalrp_tools as mlt
        from mambalrp_tools import evaluation as ev, tasks
        torch.set_num_threads(1)
        model, tok = mlt.load_model("toy/sentiment")
        ex = tasks.load("sentiment", 2, 0)
        try:
            model(input_ids=ex[0].input_ids[None])
            raise SystemExit("transformers' forward did not reach the stand-in kernels")
        except RuntimeError as err:
            assert "stand-in" in str(err), err
        q = dict(progress=False)
        for rep in ("unk", "zero", "delete"):
            ev.faithfulness(model, ex, ["mambalrp", "gi"], replacement=rep, steps=3, tokenizer=tok, **q)
        ev.conservation(model, ex, ["mambalrp", "gi"], **q)
        ev.long_range(model, ex, k=3, methods=["mambalrp", "ig:n_steps=4"], **q)
        ev.randomization_check(model, ex[:1], ["mambalrp", "smoothgrad:nt_samples=2"], **q)
        copy_model, copy_tok = mlt.load_model("toy/copying")
        ev.copy_alignment(copy_model, tasks.load("copying", 2, 0, max_length=10), ["mambalrp", "rollout"], **q)
        bios, bios_tok = mlt.load_model("toy/bios")
        ev.gender_bias(bios, tasks.load("bios", 2, 0), ["mambalrp"], tokenizer=bios_tok, min_count=1, **q)
        needle, needle_tok = mlt.load_model("toy/needle")
        ev.needle_grid(needle, [128], [0.5], ["mambalrp"], n=1, tokenizer=needle_tok, **q)
        print("all analyses ran")
    """)
    env = child_env(STANDINS)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all analyses ran" in proc.stdout


# ------------------------------------------------------------------ data-parallel (torchrun-style, gloo)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("accelerate", [False, True])
def test_process_group_backend_follows_the_evaluation_device(monkeypatch, accelerate):
    """On a GPU machine, CPU processes (a CPU model) must join with gloo: nccl cannot put several
    processes on one GPU. A model on a GPU selects nccl."""
    import torch.distributed as dist

    from mambalrp_tools.evaluation import distributed

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: chosen.append(f"set_device {i}"))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: chosen.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    if accelerate:
        class FakeState:  # records what Accelerate was asked for
            def __init__(self, cpu=False):
                chosen.append("cpu" if cpu else "gpu")
                self.process_index, self.num_processes = 1, 2

        monkeypatch.setitem(sys.modules, "accelerate", SimpleNamespace(PartialState=FakeState))
    else:
        monkeypatch.setitem(sys.modules, "accelerate", None)  # import fails: plain torch.distributed
    assert distributed.world(torch.device("cpu")) == distributed.World(1, 2)
    assert chosen == (["cpu"] if accelerate else ["gloo"])
    chosen.clear()
    distributed.world("cuda:0")
    assert chosen == (["gpu"] if accelerate else ["set_device 0", "nccl"])

DIST_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import mambalrp_tools as mlt
    from mambalrp_tools import evaluation as ev, tasks
    torch.set_num_threads(1)
    out, n, methods, group = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
    if group == "plain":  # as if Accelerate were not installed: the analysis joins through torch.distributed
        sys.modules["accelerate"] = None
    if group == "caller":  # the caller sets up the process group; else the analysis joins the launcher's
        torch.distributed.init_process_group("gloo")
    if len(sys.argv) > 5:  # "R:S": rank R's compute raises on sample S
        fail_rank, fail_sample = map(int, sys.argv[5].split(":"))
        faith = sys.modules["mambalrp_tools.evaluation.faithfulness"]  # the module (ev.faithfulness: the function)
        real = faith.run_analysis

        def run_analysis(analysis, model, examples, methods, compute, *args, **kwargs):
            def failing(batch, spec):
                if int(os.environ["RANK"]) == fail_rank and any(s == fail_sample for s, _ in batch):
                    raise ZeroDivisionError(f"injected failure on sample {fail_sample}")
                return compute(batch, spec)
            return real(analysis, model, examples, methods, failing, *args, **kwargs)
        faith.run_analysis = run_analysis
    model, tok = mlt.load_model("toy/sentiment")
    if os.environ.get("ANALYSIS") == "randomization":  # an analysis of the engine's per-sample loop
        res = ev.randomization_check(model, tasks.load("sentiment", n, 0), methods, out=out, progress=False)
    else:
        res = ev.faithfulness(model, tasks.load("sentiment", n, 0), methods, steps=4, tokenizer=tok, out=out,
                              progress=False)
    print(json.dumps({"n_records": len(res.records), "summary": res.summary}))
""")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world_size, out, n, methods, group="launcher", fail=None, env=None):
    """What torchrun does for CPU processes: RANK / WORLD_SIZE / MASTER_* in each process' environment.
    fail="R:S": rank R's compute raises ZeroDivisionError on sample S. env: more environment variables."""
    port = _free_port()
    procs = []
    for rank in range(world_size):
        variables = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(env or {}))
        argv = [sys.executable, "-c", DIST_SCRIPT, str(out), str(n), methods, group, *([fail] if fail else [])]
        procs.append(subprocess.Popen(argv, env=variables,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    return procs


def _by_key(records):
    keys = [(json.dumps(r["sample"]), r["method"]) for r in records]
    assert len(keys) == len(set(keys)), "a (sample, method) record twice"
    return dict(zip(keys, records))


def _same_records(a, b):
    a, b = _by_key(a), _by_key(b)
    assert a.keys() == b.keys()
    for key in a:
        for field, value in a[key].items():
            other = b[key][field]
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                assert other == pytest.approx(value, rel=1e-5, abs=1e-6), (key, field)
            else:
                assert other == value, (key, field)


def _same_summary(summary, reference):
    ref = reference["methods"]
    assert summary["methods"].keys() == ref.keys()
    for method, row in summary["methods"].items():
        assert row.keys() == ref[method].keys()
        for key, value in row.items():
            assert value == pytest.approx(ref[method][key], rel=1e-5, abs=1e-6, nan_ok=True), (method, key)


def _markers(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("done.", "failed.", "merged.")))


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    model, tok = mlt.load_model("toy/sentiment")
    out = tmp_path_factory.mktemp("ref") / "run"
    torch.set_num_threads(1)
    res = ev.faithfulness(model, mlt.tasks.load("sentiment", 10, 0), ["mambalrp", "gi"], steps=4, tokenizer=tok,
                          out=out, progress=False)
    return res


@pytest.mark.timeout(400)
# launcher: Accelerate's PartialState (installed with the dev extra); plain: torch.distributed itself;
# caller: a process group the caller set up
@pytest.mark.parametrize("group", ["launcher", "plain", "caller"])
def test_two_gloo_processes_give_the_records_and_summary_of_one(one_process_reference, tmp_path, group):
    out = tmp_path / "run"
    procs = _launch(2, out, 10, "mambalrp,gi", group)
    results = [p.communicate(timeout=380) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
    assert results[1][0].strip() and json.loads(results[1][0])["n_records"] == 20  # every rank gets the records
    _same_records(runs.read_records(out), one_process_reference.records)
    assert sorted(p.name for p in out.glob("records*.jsonl")) == ["records.jsonl"]  # rank files merged
    _same_summary(json.loads((out / runs.SUMMARY).read_text()), one_process_reference.summary)
    assert not (out / ".lock").exists()
    assert not _markers(out)  # a complete run leaves no done / merged markers


@pytest.mark.timeout(500)
def test_two_processes_killed_midway_then_finished_by_one(one_process_reference, tmp_path):
    out = tmp_path / "run"
    procs = _launch(2, out, 10, "mambalrp,gi")
    deadline = time.time() + 300
    try:
        while time.time() < deadline and (len(runs.read_records(out)) if out.exists() else 0) < 3:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    partial = runs.read_records(out)
    assert 0 < len(partial) < 20, "the kill came too late to test resuming"
    assert list(out.glob("records.rank*.jsonl"))  # each rank wrote its own file
    model, tok = mlt.load_model("toy/sentiment")
    res = ev.faithfulness(model, mlt.tasks.load("sentiment", 10, 0), ["mambalrp", "gi"], steps=4, tokenizer=tok,
                          out=out, progress=False)  # the same run, now in one process
    _same_records(res.records, one_process_reference.records)
    _same_records(runs.read_records(out), one_process_reference.records)
    assert not list(out.glob("records.rank*.jsonl"))


def _finish_in_one_process(out, reference):
    """The same run, now in one process: exactly the records and summary of an uninterrupted run."""
    model, tok = mlt.load_model("toy/sentiment")
    res = ev.faithfulness(model, mlt.tasks.load("sentiment", 10, 0), ["mambalrp", "gi"], steps=4, tokenizer=tok,
                          out=out, progress=False)
    _same_records(res.records, reference.records)
    _same_records(runs.read_records(out), reference.records)
    assert sorted(p.name for p in out.glob("records*.jsonl")) == ["records.jsonl"]
    _same_summary(res.summary, reference.summary)
    _same_summary(json.loads((out / runs.SUMMARY).read_text()), reference.summary)
    assert not _markers(out) and not (out / ".lock").exists()


#: rank 0's share of a fresh 10-sample, 2-method run over 2 ranks (the pending pairs, every other one)
RANK0_SHARE = [(json.dumps(s), m) for s in range(10) for m in ("mambalrp", "gradient_x_input")][0::2]


@pytest.mark.timeout(500)
def test_a_rank_that_raises_lets_the_others_finish_then_a_rerun_completes(one_process_reference, tmp_path):
    out = tmp_path / "run"
    procs = _launch(2, out, 10, "mambalrp,gi", fail="1:3")  # rank 1 (method gi) fails on sample 3
    (_, err0), (_, err1) = [p.communicate(timeout=450) for p in procs]
    assert procs[0].returncode != 0 and procs[1].returncode != 0, (err0, err1)
    on_disk = _by_key(runs.read_records(out))
    missing = 20 - len(on_disk)
    assert set(RANK0_SHARE) <= on_disk.keys()  # rank 0 finished its whole share
    assert (json.dumps(3), "gradient_x_input") not in on_disk and missing >= 1
    assert {(json.dumps(s), "gradient_x_input") for s in range(3)} <= on_disk.keys()  # rank 1's earlier records
    # rank 0 (and any rank that did not fail) says who failed, where, and what is missing
    assert "RunIncomplete" in err0, err0
    assert ("rank 1 failed on sample 3, method 'gradient_x_input' (ZeroDivisionError: injected failure on sample 3)"
            in err0)
    assert f"{missing} of 20 (sample, method) records are missing" in err0
    assert "run the same command again to complete them" in err0
    # the failed rank raises its own exception, with a note on the run (written once rank 0 had merged)
    assert "ZeroDivisionError: injected failure on sample 3" in err1, err1
    assert f"{missing} of 20 (sample, method) records are missing" in err1
    # records merged, no summary, the failure on record (JSON), no lock
    assert sorted(p.name for p in out.glob("records*.jsonl")) == ["records.jsonl"]
    assert not (out / runs.SUMMARY).exists()
    failed = json.loads((out / "failed.rank1.json").read_text())
    assert (failed["rank"], failed["error"], failed["samples"], failed["methods"]) == (1, "ZeroDivisionError", [3],
                                                                                         ["gradient_x_input"])
    assert "injected failure" in failed["message"] and "Traceback" in failed["traceback"]
    merged = json.loads((out / "merged.json").read_text())
    assert merged["complete"] is False and merged["missing"] == missing and merged["total"] == 20
    assert not (out / ".lock").exists()
    _finish_in_one_process(out, one_process_reference)


@pytest.mark.timeout(500)
def test_a_rank_killed_outright_leaves_the_run_intact(one_process_reference, tmp_path):
    """Without torchrun's agent (which would stop rank 0 too), rank 0 sees that rank 1 has ended,
    finishes its share, merges and raises; a rerun completes the run."""
    out = tmp_path / "run"
    procs = _launch(2, out, 10, "mambalrp,gi")
    rank1 = out / "records.rank1.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not (rank1.exists() and rank1.read_bytes().count(b"\n") >= 1):
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
    finally:
        if procs[1].poll() is None:
            os.killpg(procs[1].pid, signal.SIGKILL)  # stays a zombie until reaped below: rank 0 must see it ended
    _, err0 = procs[0].communicate(timeout=400)
    procs[1].communicate()
    assert procs[1].returncode == -signal.SIGKILL, "rank 1 ended before the kill"
    on_disk = _by_key(runs.read_records(out))
    assert set(RANK0_SHARE) <= on_disk.keys() and len(on_disk) < 20, "the kill came too late to test resuming"
    assert procs[0].returncode != 0 and "rank 1 ended without reporting" in err0, err0
    assert f"{20 - len(on_disk)} of 20 (sample, method) records are missing" in err0
    assert not (out / runs.SUMMARY).exists()
    _finish_in_one_process(out, one_process_reference)


@pytest.mark.timeout(400)
def test_two_gloo_processes_share_a_per_sample_analysis(tmp_path):
    """randomization_check goes through the engine's per-sample loop (one record per method of a
    sample, computed together): 2 processes give the records and summary of 1."""
    model, _ = mlt.load_model("toy/sentiment")
    torch.set_num_threads(1)
    ref = ev.randomization_check(model, mlt.tasks.load("sentiment", 4, 0), ["mambalrp", "gi"], out=tmp_path / "ref",
                                 progress=False)
    out = tmp_path / "run"
    procs = _launch(2, out, 4, "mambalrp,gi", env={"ANALYSIS": "randomization"})
    for p in procs:
        _, err = p.communicate(timeout=380)
        assert p.returncode == 0, err
    assert len(ref.records) == 8
    _same_records(runs.read_records(out), ref.records)
    _same_summary(json.loads((out / runs.SUMMARY).read_text()), ref.summary)
    assert not _markers(out)


@pytest.mark.timeout(400)
def test_markers_of_an_earlier_failed_attempt_are_cleared_on_resume(one_process_reference, tmp_path):
    """A folder left by a failed 3-process attempt (its done, failed and merged markers, a rank file not
    merged) resumes with 2 processes: the stale markers neither end the wait early nor fail the run."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_process_reference.run_dir, out)
    lines = (out / runs.RECORDS).read_text().splitlines(keepends=True)
    (out / runs.RECORDS).write_text("".join(lines[:5]))
    (out / "records.rank2.jsonl").write_text("".join(lines[5:8]))
    (out / runs.SUMMARY).unlink()
    failure = {"rank": 1, "error": "ZeroDivisionError", "message": "old", "samples": [4], "methods": ["gi"]}
    for r in range(3):
        (out / f"done.rank{r}.json").write_text(json.dumps({"rank": r, "failed": r == 1}))
    (out / "failed.rank1.json").write_text(json.dumps(failure))
    (out / "merged.json").write_text(json.dumps({"complete": False, "world_size": 3, "total": 20, "missing": 12,
                                                 "failed": [failure], "ended": []}))
    procs = _launch(2, out, 10, "mambalrp,gi")
    results = [p.communicate(timeout=380) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
    _same_records(runs.read_records(out), one_process_reference.records)
    assert sorted(p.name for p in out.glob("records*.jsonl")) == ["records.jsonl"]
    _same_summary(json.loads((out / runs.SUMMARY).read_text()), one_process_reference.summary)
    assert not _markers(out) and not (out / ".lock").exists()


#: 2 CPU processes under `accelerate launch`, everything on the command line (no accelerate config).
#: `--cpu --num_processes 2` is not it: Accelerate then starts ONE process (several CPU processes need
#: mpirun and `--mpirun_hostfile`); `--multi_gpu` goes through torch.distributed.run, which on a machine
#: without GPUs starts CPU processes (gloo), like torchrun.
ACCELERATE_TWO_CPU = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                      "--dynamo_backend", "no"]


@pytest.mark.timeout(300)
def test_accelerate_launch_two_cpu_processes_give_the_records_of_one(tmp_path):
    pytest.importorskip("accelerate", reason="accelerate is not installed (pip install -e '.[distributed]')")
    if torch.cuda.is_available():
        pytest.skip("--multi_gpu starts one process per GPU here; the test is for a machine without GPUs")
    cli = ["evaluate", "faithfulness", "--model", "toy/sentiment", "--n", "6", "--methods", "mambalrp,gi",
           "--steps", "4", "--threads", "1", "--quiet", "--no-figures"]
    # HF_HOME: an empty one, so that no accelerate config of this machine's user is read
    env = child_env(HF_HOME=str(tmp_path / "hf"))
    one = subprocess.run([sys.executable, "-m", "mambalrp_tools.cli", *cli, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    logs = tmp_path / "logs"
    # what `accelerate launch ...` runs (the console script calls accelerate_cli.main)
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *ACCELERATE_TWO_CPU,
                          "--log_dir", str(logs), "--tee", "3", "-m", "mambalrp_tools.cli", "--", *cli,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=240,
                         cwd=tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    assert len(list(logs.glob("*/attempt_0/*/stderr.log"))) == 2  # two worker processes ran
    assert f"run folder: {tmp_path / 'two'}" in two.stdout  # rank 0 printed the table
    _same_records(runs.read_records(tmp_path / "two"), runs.read_records(tmp_path / "one"))
    _same_summary(json.loads((tmp_path / "two" / runs.SUMMARY).read_text()),
                  json.loads((tmp_path / "one" / runs.SUMMARY).read_text()))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["manifest.json", "records.jsonl", "summary.json"]
