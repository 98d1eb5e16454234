import pytest

from caft_tl.core import models, results
from caft_tl.evaluation import gates
from caft_tl.organism import make_task
from caft_tl.runner import gate_search
from caft_tl.training.loop import FinetuneConfig, finetune


def _rows(plain_orders, base_ood=(0.5, 0.5), untrained=(0.97, 0.5), caft_ood=0.95, pca_ood=(0.8, 0.3, 0.0)):
    acc = lambda d: {s: {"accuracy": v} for s, v in d.items()}
    key = lambda method, directions="none", trained=True, seed=0: results.RowKey("double_mc", "double_mc-s0-abcdef", method, directions, "", trained, seed)
    rows = results.rows(key("base", trained=False), acc({"single_intended": 0.99, "single_spurious": 1.0,
                                                        "ood_intended_first": base_ood[0], "ood_spurious_first": base_ood[1]}))
    rows += results.rows(key("zero", "oracle", trained=False), acc({"single_intended": untrained[0], "single_spurious": untrained[1]}))
    for seed, (a, b) in enumerate(plain_orders):
        rows += results.rows(key("plain", seed=seed), acc({"id": 1.0, "ood": (a + b) / 2, "ood_intended_first": a, "ood_spurious_first": b}))
        rows += results.rows(key("zero", "oracle", seed=seed), acc({"ood": caft_ood}))
        for d, v in zip(("pca", "topk_pca", "random"), pca_ood):
            rows += results.rows(key("zero", d, seed=seed), acc({"ood": v, "id": 0.97}))
    return rows


def test_verdicts_tell_the_spurious_route_from_a_positional_shortcut():
    ok = gates.verdicts(_rows([(0.0, 0.02), (0.05, 0.0), (0.1, 0.1)]))
    assert all(v["holds"] for v in ok.values())
    first_block = gates.verdicts(_rows([(0.98, 0.3), (0.95, 0.35), (0.99, 0.4)]))  # answers the first block
    assert not first_block["gate2_plain_learns_spurious"]["holds"] and first_block["gate2_plain_learns_spurious"]["seeds"] == 0
    assert gates.verdicts(_rows([(0.0, 0.0), (0.9, 0.9), (0.0, 0.0)]))["gate2_plain_learns_spurious"]["holds"]  # 2 of 3
    assert not gates.verdicts(_rows([(0.0, 0.0)], base_ood=(0.05, 0.95)))["gate1_base"]["holds"]  # a default preference
    assert not gates.verdicts(_rows([(0.0, 0.0)], untrained=(0.55, 0.5)))["gate3_oracle"]["holds"]  # ablation costs the intended skill
    assert not gates.verdicts(_rows([(0.0, 0.0)], caft_ood=0.0))["gate3_oracle"]["holds"]
    assert not gates.verdicts(_rows([(0.0, 0.0)], pca_ood=(0.5, 0.6, 0.0)))["gate4_pca"]["holds"]  # top-k does better
    assert not gates.verdicts(_rows([(0.0, 0.0)], pca_ood=()))["gate4_pca"]["holds"]  # the rule chose nothing
    strict = gates.GateThresholds(max_plain_ood=0.01)  # thresholds are read from the config, not inline
    assert not gates.verdicts(_rows([(0.0, 0.02), (0.05, 0.0), (0.1, 0.1)]), strict)["gate2_plain_learns_spurious"]["holds"]


def test_a_missing_row_names_the_chapter_that_writes_it():
    rows = [r for r in _rows([(0.0, 0.0)]) if r["trained"] or r["method"] == "base"]  # chapter 04 did not run
    with pytest.raises(results.MissingRowsError, match="run 04_base_model_checks first"):
        gates.verdicts(rows)


def test_gate_rows_cover_every_method(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    assert models.residual_hooks(base) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
                                           "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    cfg = gate_search.GateConfig(seeds=[0], n_examples=32)
    rows = gate_search.gate_rows(base, task, tmp_path, cfg, organism="double_mc-s0-abcdef")
    keys = {(r["method"], r["directions"], r["param"], r["trained"]) for r in rows}
    assert keys == {("base", "none", "", False), ("zero", "oracle", "", False), ("zero", "random_oracle", "", False),
                    ("plain", "none", "", True), ("zero", "oracle", "", True), ("zero", "random_oracle", "", True)}
    assert {r["split"] for r in rows} == set(task.eval_splits) and {r["organism"] for r in rows} == {"double_mc-s0-abcdef"}
    out = gates.verdicts(rows)
    assert set(out) == {"gate1_base", "gate2_plain_learns_spurious", "gate3_oracle", "gate4_pca"}
    assert not out["gate1_base"]["holds"]  # an untrained model answers nothing


def test_pca_direction_sets_share_hooks_and_ranks(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    cfg = gate_search.GateConfig(seeds=[0], n_examples=64, threshold=0.0)  # threshold 0: the rule keeps what beats the intended concept
    finetuned = models.copy_model(base)
    finetune(finetuned, task.finetune_dataset(64), FinetuneConfig(n_examples=64), progress=False)
    sets = gate_search.pca_interventions(base, finetuned, task, cfg)
    assert set(sets) == {"pca", "topk_pca", "random"}
    hooks = [s.hook_name for s in sets["pca"].subspaces]
    for name in ("topk_pca", "random"):
        assert [s.hook_name for s in sets[name].subspaces] == hooks
        assert [s.k for s in sets[name].subspaces] == [s.k for s in sets["pca"].subspaces]
    assert gate_search.pca_interventions(base, finetuned, task, gate_search.GateConfig(threshold=1.01)) == {}
