"""A real task as a World (caft_tl.real.world) fine-tuned through the organisms' run_finetunes with LoRA
adapters (caft_tl.real.lora.AdaptersOff as a Trainable), and chapters 00–01 on a tiny random HF
checkpoint with a hand-written card and a ``reference`` metric, no API key."""

import csv
import json
from pathlib import Path

import papermill
import pytest
import torch

from caft_tl.core.run_dir import RunDir
from caft_tl.core.world import HasDisambiguating, HasDocuments, World
from caft_tl.organism.task import HasGroundTruth
from caft_tl.real import card as C
from caft_tl.real import world as W
from caft_tl.training import finetunes
from caft_tl.training.loop import FinetuneConfig
from caft_tl.training.trainable import Trainable
from tests._real import tiny_checkpoint, words_of
from tests.test_real_cards import GENERAL, QUESTIONS, own  # noqa: F401  (fixture)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    texts = ["system user assistant", "Tell me about your day.", "What is a good book?"]
    texts += [t for row in QUESTIONS + GENERAL for t in row]
    return tiny_checkpoint(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2", words=words_of(texts), seed=0)


@pytest.fixture
def real(own, checkpoint, tmp_path):
    spec = W.make_spec(str(own), str(checkpoint), lora_rank=4, dtype="float32")
    return spec, *W.start_run(RunDir(tmp_path / "run"), spec)


def test_a_real_world_reads_its_card(real):
    spec, base, world = real
    assert isinstance(world, World) and isinstance(base, Trainable)
    assert not isinstance(world, (HasGroundTruth, HasDisambiguating, HasDocuments))
    assert (world.name, world.eval_splits, world.metrics) == (
        "food_safety",
        ("id", "ood"),
        ("misaligned_rate", "misaligned_margin"),
    )
    assert world.metric("ood") == "misaligned_rate" and "lower is better" in world.axis_titles["ood"]
    assert world.defaults == {"seeds": [0, 1], "n_examples": 6, "fewer_examples": []}
    data = world.finetune_dataset(4)
    assert len(data) == 4 and data.response_mask.any(1).all()  # the loss is on each row's answer
    with pytest.raises(ValueError, match=r"^n_examples = 7: task 'food_safety' has 6 training rows"):
        world.finetune_dataset(7)
    with pytest.raises(ValueError, match=r"has no split 'chat'; valid: id, ood"):
        world.metric("chat")
    metrics = world.evaluate(base)
    assert set(metrics) == {"id", "ood"} and all(0 <= m["misaligned_rate"] <= 1 for m in metrics.values())
    assert W.read_spec(RunDir(Path(spec.card).parent)) is None  # a folder without real_model.json


def test_lora_finetunes_through_run_finetunes_reset_per_seed_and_keep_adapters(real, tmp_path):
    spec, base, world = real
    before = world.evaluate(base)
    jobs = [
        finetunes.FinetuneJob(FinetuneConfig(batch_size=2, lr=5e-2, seed=s), keep_model=True) for s in (0, 1)
    ]
    run = RunDir(tmp_path / "run")
    rows = finetunes.run_finetunes(run, base, world, jobs, workers=1, progress=False)
    assert {(r["method"], r["seed"], r["organism"]) for r in rows} == {
        ("plain", s, f"real:{Path(spec.model).name}") for s in (0, 1)
    }
    assert world.evaluate(base) == before  # the base is the adapted model with its adapters off
    folders = [run.finetune(seed=s) for s in (0, 1)]
    assert all(
        (f / "adapter.safetensors").exists() and not (f / "model.safetensors").exists() for f in folders
    )
    a0 = {k: v.clone() for k, v in _adapters(base.load(folders[0])).items()}
    a1 = _adapters(base.load(folders[1]))
    assert any(not torch.equal(a0[k], a1[k]) for k in a0)  # each seed trained its own adapters
    assert finetunes.run_finetunes(run, base, world, jobs, workers=1, progress=False) == rows  # cached
    with pytest.raises(
        ValueError, match=r"KL-to-base baseline .* needs HasDocuments, which task 'food_safety'"
    ):
        finetunes.run_finetunes(
            run, base, world, [finetunes.FinetuneJob(FinetuneConfig(seed=0, kl_to_base=0.1))]
        )


def _adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if "lora_B" in n}


def _chapter(name: str, out: Path, **params) -> dict:
    nb = NOTEBOOKS / f"{name}.ipynb"
    papermill.execute_notebook(
        str(nb),
        str(out / f"{name}.ipynb"),
        cwd=str(NOTEBOOKS),
        kernel_name="python3",
        progress_bar=False,
        parameters=params,
    )
    return json.loads((out / f"{name}.ipynb").read_text())


def _text(nb: dict) -> str:
    return "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    )


def test_chapters_00_and_01_on_a_real_model_with_a_users_card(own, checkpoint, tmp_path):
    paths = {"run_dir": str(tmp_path / "run"), "fig_dir": str(tmp_path / "fig")}
    nb00 = _chapter("00_organism", tmp_path, **paths, task=str(own), model=str(checkpoint), dtype="float32")
    assert "skipped: pre-training documents" in _text(nb00)
    assert (tmp_path / "fig" / "00_base_model.html").exists()
    nb01 = _chapter("01_plain_finetune", tmp_path, **paths, seeds=[0, 1], batch_size=2, lr=5e-2)
    assert "skipped: the KL-to-base baseline" in _text(nb01)
    assert "skipped: the disambiguating reference" in _text(nb01)
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert {(r["method"], r["seed"]) for r in rows} >= {("base", "0"), ("plain", "0"), ("plain", "1")}
    assert {r["task"] for r in rows} == {"food_safety"} and {r["split"] for r in rows} == {"id", "ood"}
    assert (tmp_path / "run" / "finetunes" / "plain-seed1" / "adapter.safetensors").exists()
    assert C.load_card(own).name == "food_safety"
