"""Training code (CPU: loss drops, bit-deterministic, inert pads, save/load, fine-tuning) and the shipped models."""

from __future__ import annotations

import json
from pathlib import Path
import os
from dataclasses import replace

import pytest
import torch

import mambalrp_tools as mlt
from conftest import tiny_model
from test_mamba2 import mamba2_model
from mambalrp_tools import cli, tasks
from mambalrp_tools.models import TOY_DIR
from mambalrp_tools.tasks.text import Encoder
from mambalrp_tools.zoo import quality as E
from mambalrp_tools.zoo import train as T

TINY = dict(hidden_size=16, num_hidden_layers=1, state_size=4, batch_size=8, warmup=3)


@pytest.fixture
def tiny_specs(monkeypatch):
    """Shrink the specs so a CPU run takes seconds; the code path is the shipped models' one."""
    for name in ("sentiment", "copying"):
        params = {"min_length": 4, "max_length": 8} if name == "copying" else {}
        monkeypatch.setitem(T.SPECS, name, replace(T.SPECS[name], lr=1e-2, params=params, **TINY))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("arch", ["mamba", "falcon_mamba", "mamba2"])
def test_package_engine_gives_transformers_parameter_gradients(arch):
    """Training through the package's forward (engine "package", every rule off) must give every
    parameter the gradient transformers' own forward gives it: the forward recomputes some regions in
    backward, and a weight those regions read must still get its gradient."""
    model = (mamba2_model(zero_biases=False) if arch == "mamba2" else tiny_model(arch)).double().train()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, model.config.vocab_size, (2 * 12,), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding, as the training batches have

    def gradients(engine):
        model.zero_grad(set_to_none=True)
        with T.forward_context(model, engine):
            logits = model.eval()(input_ids=ids, attention_mask=mask).logits  # eval: the training path is fused
        torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    reference, ours = gradients("hf"), gradients("package")
    errors = {}
    for name, grad in reference.items():
        assert ours[name] is not None, f"{name} got no gradient through the package's forward"
        errors[name] = float((ours[name] - grad).norm() / grad.norm())
    # float64 models, but transformers' RMS norms compute in float32 (about 1e-7 of each gradient)
    assert max(errors.values()) < 1e-5, {k: f"{v:.1e}" for k, v in errors.items() if v >= 1e-5}


def _fixed_batch_loss(model, name, tokenizer):
    batch = T.make_batch(T.SPECS[name], Encoder(tokenizer), seed=12345, k=0)
    with torch.no_grad(), T.forward_context(model, "package"):
        return T.loss_and_correct(model.eval(), batch, tasks.get_task(name).KIND)[0].item()


def test_cli_training_loss_drops_and_is_bit_deterministic(tiny_specs, tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert cli.main(["train-toy", "sentiment", "--steps", "20", "--out", str(out), "--no-eval",
                         "--log-every", "5", "--device", "cpu"]) == 0
        model, tok = mlt.load_model(str(out))
        runs.append((out, model, tok))
    (out0, m0, tok0), (_, m1, _) = runs
    for (k, a), (_, b) in zip(m0.state_dict().items(), m1.state_dict().items()):
        assert torch.equal(a, b), f"{k} differs between two identical CPU runs"
    fresh = T.build_model(T.SPECS["sentiment"], tok0, seed=0)
    before, after = _fixed_batch_loss(fresh, "sentiment", tok0), _fixed_batch_loss(m0, "sentiment", tok0)
    assert after < before - 0.05, (before, after)
    record = json.loads((out0 / "training.json").read_text())
    assert record["command"].startswith("mambalrp-tools train-toy sentiment --steps 20 --seed 0")
    assert record["seed"] == 0 and record["steps"] == 20
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out0.iterdir()}
    assert type(m0).__name__ == "MambaClassifier" and m0.config.num_labels == 2


def test_lm_training_pads_inert_and_roundtrip(tiny_specs, tmp_path, monkeypatch):
    model, tok, rec = T.train_toy("copying", tmp_path / "copying", steps=6, evaluate=False, log_every=3, argv=["t"])
    assert rec["final"]["loss"] > 0 and not model.training
    model = model.cpu()  # trained on the GPU where there is one; compared with a CPU load below
    emb = model.get_input_embeddings().weight
    assert torch.count_nonzero(emb[T.PAD_ID]) == 0  # the pad embedding stays zero through training
    ex = tasks.load("copying", 1, seed=0, tokenizer=tok, min_length=4, max_length=8)[0]
    ids = ex.input_ids[None]
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    with torch.no_grad():
        a, b = model(ids).logits[0, -1], model(padded).logits[0, -1]  # transformers' own forward, no mask
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # save/load through the embedded-model path gives identical logits
    monkeypatch.setattr("mambalrp_tools.models.TOY_DIR", tmp_path)
    assert "toy/copying" in mlt.list_toy_models()
    again, tok2 = mlt.load_model("toy/copying")
    assert type(again).__name__ == "MambaForCausalLM"
    with torch.no_grad():
        assert torch.equal(model(padded).logits, again(padded).logits)
    assert tok2.get_vocab() == tok.get_vocab() and tok2.padding_side == "left"
    # explanations on a toy model conserve exactly (no relevance-carrying biases)
    expl = mlt.explain(again, ids, target=ex.target)
    assert float(expl.conservation_error[0]) < 1e-4


def test_finetune_hub_model_on_local_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from transformers import MambaConfig, MambaForCausalLM

    words = "a great good movie dull bad film so !".split()
    tok = T.build_word_tokenizer(words)
    base = tmp_path / "base"
    torch.manual_seed(0)
    MambaForCausalLM(MambaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, state_size=4,
                                 expand=2)).save_pretrained(base)
    tok.save_pretrained(base)
    rows = {"sentence": ["a great movie", "a dull film", "so good !", "bad bad film", "great great", "dull"],
            "label": [1, 0, 1, 0, 1, 0]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "sst.parquet"))
    out = tmp_path / "ft"
    model, _, rec = T.finetune(str(base), "sst2", out, source=str(tmp_path / "sst.parquet"), steps=4, batch_size=3,
                               lr=1e-2, device="cpu", eval_split="train", eval_n=6, log_every=1)
    assert len(rec["losses"]) == 4 and all(l == l for l in rec["losses"])
    assert 0.0 <= rec["accuracy"] <= 1.0
    loaded, tok2 = mlt.load_model(str(out))
    assert type(loaded).__name__ == "MambaClassifier" and loaded.config.num_labels == 2
    base_lm = MambaForCausalLM.from_pretrained(base)
    # the backbone started from the checkpoint: same embedding rows as the base (lr moved them only a little)
    assert torch.allclose(loaded.backbone.embeddings.weight, base_lm.backbone.embeddings.weight, atol=0.1)
    ids = torch.tensor([[4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.cpu()(ids).logits)


# ------------------------------------------------------------------------- the shipped models
SHIPPED = [n for n in ("copying", "needle", "bios", "sentiment") if (TOY_DIR / n / "config.json").is_file()]
MB = 1 << 20


def _load_offline(name):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: tests never reach a hub
    return mlt.load_model(f"toy/{name}")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_files_and_record(name):
    folder = TOY_DIR / name
    assert (folder / "model.safetensors").stat().st_size <= 5 * MB
    record = json.loads((folder / "training.json").read_text())
    assert record["seed"] is not None and record["command"].startswith(f"mambalrp-tools train-toy {name} --steps")
    assert record["metrics"]["meets_bar"] or record.get("note"), "a model below its bar must say why"
    assert "train-toy" in (folder / "README.md").read_text()
    model, tok = _load_offline(name)
    assert tok.get_vocab() == T.build_word_tokenizer(tasks.get_task(name).vocabulary()).get_vocab()
    assert torch.count_nonzero(model.get_input_embeddings().weight[T.PAD_ID]) == 0


@pytest.mark.skipif("copying" not in SHIPPED, reason="toy/copying not shipped")
def test_shipped_copying_copies_short_sequences():
    model, tok = _load_offline("copying")
    with T.forward_context(model, "package"):
        r = E.eval_copying(model, tok, n=6, lengths=(16, 32), seed=7)
    assert r["summary"]["token_accuracy_8_to_64_min"] >= 0.99, r


@pytest.mark.skipif("copying" not in SHIPPED, reason="toy/copying not shipped")
def test_shipped_copying_meets_bar():
    model, tok = _load_offline("copying")
    with T.forward_context(model, "package"):
        r = E.eval_copying(model, tok, n=4, lengths=(64,), seed=7)
    assert r["summary"]["token_accuracy_8_to_64_min"] >= 0.99, r


@pytest.mark.skipif("needle" not in SHIPPED, reason="toy/needle not shipped")
def test_shipped_needle_meets_bar():
    model, tok = _load_offline("needle")
    with T.forward_context(model, "package"):
        r = E.eval_needle(model, tok, n=3, lengths=(1024,), depths=(0.0, 0.5, 1.0), seed=7)
    assert r["summary"]["worst_cell_digit_accuracy_up_to_1024"] >= 0.95, r
    # the task's own examples (first code digit) through transformers' forward
    exs = tasks.load("needle", 3, seed=7, tokenizer=tok, context_length=128)
    with torch.no_grad():
        pred = [int(model(e.input_ids[None]).logits[0, -1].argmax()) for e in exs]
    assert sum(p == e.target for p, e in zip(pred, exs)) >= 2


@pytest.mark.skipif("bios" not in SHIPPED, reason="toy/bios not shipped")
def test_shipped_bios_meets_bar_and_has_a_gender_shortcut():
    model, tok = _load_offline("bios")
    with T.forward_context(model, "package"):  # the same values as transformers' forward, faster on CPU
        r = E.eval_bios(model, tok, n=120, seed=7)["summary"]
    assert r["accuracy"] >= 0.9, r
    assert r["swap_flip_rate_ambiguous"] > 0.3 and r["swap_flip_rate"] > 0.02, r


@pytest.mark.skipif("sentiment" not in SHIPPED, reason="toy/sentiment not shipped")
def test_shipped_sentiment_meets_bar():
    model, tok = _load_offline("sentiment")
    r = E.eval_sentiment(model, tok, n=200, seed=7)["summary"]  # through the package's own forward
    assert r["accuracy"] >= 0.95, r


# ------------------------------------------------------------------ one source of truth for the recipes


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(T.SPECS))
def test_shipped_training_json_is_the_recipe(name):
    """training.json of each shipped model records exactly the recipe in SPECS, and its command is what
    `train-toy NAME` runs by default (the recipe's steps, seed, batch, rate and workers)."""
    from dataclasses import asdict

    spec = T.SPECS[name]
    record = json.loads((T.MODELS_DIR / name / "training.json").read_text())
    assert record["spec"] == json.loads(json.dumps(asdict(spec)))
    assert record["steps"] == spec.steps and record["seed"] == spec.seed
    engine = "hf" if spec.arch == "mamba" else "package"  # what engine="auto" picks on a GPU with the kernels
    assert record["command"] == T.reproduce_command(name, spec.steps, spec.seed, torch.device("cuda"),
                                                    spec.workers, spec, engine)


@pytest.mark.timeout(30)
def test_train_all_takes_every_hyperparameter_from_the_recipes():
    script = (Path(T.__file__).parent / "train_all.sh").read_text()
    for flag in ("--steps", "--seed", "--batch-size", "--lr", "--workers", "--time-budget"):
        assert flag not in script, flag
    loop = next(line for line in script.splitlines() if line.startswith("for name in"))
    assert loop.split(" in ")[1].rstrip("; do").split() == list(T.SPECS)
