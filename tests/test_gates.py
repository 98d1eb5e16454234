from caft_tl.core import models
from caft_tl.evaluation import gates
from caft_tl.organism import make_task
from caft_tl.training.finetunes import result_rows
from caft_tl.training.loop import FinetuneConfig, finetune


def _rows(plain_orders, base_ood=(0.5, 0.5), untrained=(0.97, 0.5), caft_ood=0.95, pca_ood=(0.8, 0.3, 0.0)):
    acc = lambda d: {s: {"accuracy": v} for s, v in d.items()}
    rows = result_rows("double_mc", "base", "none", "", 0, acc({"single_intended": 0.99, "single_spurious": 1.0,
                                                                 "ood_intended_first": base_ood[0], "ood_spurious_first": base_ood[1]}))
    rows += result_rows("double_mc", "zero", "oracle", "untrained", 0, acc({"single_intended": untrained[0], "single_spurious": untrained[1]}))
    for seed, (a, b) in enumerate(plain_orders):
        rows += result_rows("double_mc", "plain", "none", "", seed, acc({"id": 1.0, "ood": (a + b) / 2, "ood_intended_first": a, "ood_spurious_first": b}))
        rows += result_rows("double_mc", "zero", "oracle", "", seed, acc({"ood": caft_ood}))
        for d, v in zip(("pca", "topk_pca", "random"), pca_ood):
            rows += result_rows("double_mc", "zero", d, "", seed, acc({"ood": v, "id": 0.97}))
    return rows


def test_verdicts_tell_the_spurious_route_from_a_positional_shortcut():
    cfg = gates.GateConfig()
    ok = gates.verdicts(_rows([(0.0, 0.02), (0.05, 0.0), (0.1, 0.1)]), cfg)
    assert all(v["holds"] for v in ok.values())
    first_block = gates.verdicts(_rows([(0.98, 0.3), (0.95, 0.35), (0.99, 0.4)]), cfg)  # answers the first block
    assert not first_block["gate2_plain_learns_spurious"]["holds"] and first_block["gate2_plain_learns_spurious"]["seeds"] == 0
    assert gates.verdicts(_rows([(0.0, 0.0), (0.9, 0.9), (0.0, 0.0)]), cfg)["gate2_plain_learns_spurious"]["holds"]  # 2 of 3
    assert not gates.verdicts(_rows([(0.0, 0.0)], base_ood=(0.05, 0.95)), cfg)["gate1_base"]["holds"]  # a default preference
    assert not gates.verdicts(_rows([(0.0, 0.0)], untrained=(0.55, 0.5)), cfg)["gate3_oracle"]["holds"]  # ablation costs the intended skill
    assert not gates.verdicts(_rows([(0.0, 0.0)], caft_ood=0.0), cfg)["gate3_oracle"]["holds"]
    assert not gates.verdicts(_rows([(0.0, 0.0)], pca_ood=(0.5, 0.6, 0.0)), cfg)["gate4_pca"]["holds"]  # top-k does better
    assert not gates.verdicts(_rows([(0.0, 0.0)], pca_ood=()), cfg)["gate4_pca"]["holds"]  # the rule chose nothing


def test_gate_rows_cover_every_method(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    assert gates.residual_hooks(base) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
                                          "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    cfg = gates.GateConfig(seeds=[0], n_examples=32)
    rows = gates.gate_rows(base, task, tmp_path, cfg)
    keys = {(r["method"], r["directions"], r["param"]) for r in rows}
    assert keys == {("base", "none", ""), ("zero", "oracle", "untrained"), ("zero", "random_oracle", "untrained"),
                    ("plain", "none", ""), ("zero", "oracle", ""), ("zero", "random_oracle", "")}
    assert {r["split"] for r in rows} == set(task.eval_splits)
    out = gates.verdicts(rows, cfg)
    assert set(out) == {"gate1_base", "gate2_plain_learns_spurious", "gate3_oracle", "gate4_pca"}
    assert not out["gate1_base"]["holds"]  # an untrained model answers nothing


def test_pca_direction_sets_share_hooks_and_ranks(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    cfg = gates.GateConfig(seeds=[0], n_examples=64, threshold=0.0)  # threshold 0: the rule keeps what beats the intended concept
    finetuned = models.copy_model(base)
    finetune(finetuned, task.finetune_dataset(64), FinetuneConfig(n_examples=64), progress=False)
    sets = gates.pca_interventions(base, finetuned, task, cfg)
    assert set(sets) == {"pca", "topk_pca", "random"}
    hooks = [s.hook_name for s in sets["pca"].subspaces]
    for name in ("topk_pca", "random"):
        assert [s.hook_name for s in sets[name].subspaces] == hooks
        assert [s.k for s in sets[name].subspaces] == [s.k for s in sets["pca"].subspaces]
    assert gates.pca_interventions(base, finetuned, task, gates.GateConfig(threshold=1.01)) == {}
