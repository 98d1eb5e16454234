import pytest

from caft_tl.core import models, results
from caft_tl.evaluation import gates
from caft_tl.organism import make_task
from caft_tl.runner import gate_search
from caft_tl.training.loop import FinetuneConfig, finetune


def _rows(plain_orders, base_ood=(0.5, 0.5), untrained=(0.97, 0.5), caft_ood=0.95, pca_ood=(0.8, 0.3, 0.0)):
    acc = lambda d: {s: {"accuracy": v} for s, v in d.items()}
    key = lambda method, directions="none", trained=True, seed=0: results.RowKey(
        "double_mc", "double_mc-s0-abcdef", method, directions, "", trained, seed
    )
    rows = results.rows(
        key("base", trained=False),
        acc(
            {
                "single_intended": 0.99,
                "single_spurious": 1.0,
                "ood_intended_first": base_ood[0],
                "ood_spurious_first": base_ood[1],
            }
        ),
    )
    rows += results.rows(
        key("zero", "oracle", trained=False),
        acc({"single_intended": untrained[0], "single_spurious": untrained[1]}),
    )
    for seed, (a, b) in enumerate(plain_orders):
        rows += results.rows(
            key("plain", seed=seed),
            acc({"id": 1.0, "ood": (a + b) / 2, "ood_intended_first": a, "ood_spurious_first": b}),
        )
        rows += results.rows(key("zero", "oracle", seed=seed), acc({"ood": caft_ood}))
        for d, v in zip(("pca", "topk_pca", "random"), pca_ood):
            rows += results.rows(key("zero", d, seed=seed), acc({"ood": v, "id": 0.97}))
    return rows


def test_validity_tells_the_spurious_route_from_a_positional_shortcut():
    ok = gates.validity(_rows([(0.0, 0.02), (0.05, 0.0), (0.1, 0.1)]))
    assert all(v["holds"] for v in ok.values())
    first_block = gates.validity(_rows([(0.98, 0.3), (0.95, 0.35), (0.99, 0.4)]))  # answers the first block
    assert (
        not first_block["V2_plain_learns_spurious"]["holds"]
        and first_block["V2_plain_learns_spurious"]["seeds"] == 0
    )
    assert not first_block["valid"]["holds"]
    assert gates.validity(_rows([(0.0, 0.0), (0.9, 0.9), (0.0, 0.0)]))["V2_plain_learns_spurious"][
        "holds"
    ]  # 2 of 3
    assert not gates.validity(_rows([(0.0, 0.0)], base_ood=(0.05, 0.95)))["V1_base"][
        "holds"
    ]  # a default preference
    assert not gates.validity(_rows([(0.0, 0.0)], untrained=(0.55, 0.5)))["V3_oracle_removes_spurious"][
        "holds"
    ]  # costs the intended skill
    strict = gates.GateThresholds(max_plain_ood=0.01)  # thresholds are read from the config, not inline
    assert not gates.validity(_rows([(0.0, 0.02), (0.05, 0.0), (0.1, 0.1)]), strict)[
        "V2_plain_learns_spurious"
    ]["holds"]


def test_validity_reads_no_caft_outcome():
    """The gates are the same whatever CAFT did; CAFT's results are outcomes, reported beside them."""
    good, bad = (
        _rows([(0.0, 0.0)], caft_ood=0.95, pca_ood=(0.8, 0.3, 0.0)),
        _rows([(0.0, 0.0)], caft_ood=0.0, pca_ood=(0.5, 0.6, 0.0)),
    )
    assert gates.validity(good) == gates.validity(bad)
    no_caft = [r for r in good if not (r["method"] == "zero" and r["trained"])]
    assert gates.validity(no_caft) == gates.validity(good)
    assert all(v["holds"] for v in gates.outcomes(good).values())
    assert not any(v["holds"] for v in gates.outcomes(bad).values())
    assert not gates.outcomes(_rows([(0.0, 0.0)], pca_ood=()))["pca_beats_topk_and_random"][
        "holds"
    ]  # the rule chose nothing
    text = gates.takeaway("double_mc-s0-abcdef", gates.validity(bad), gates.outcomes(bad))
    assert (
        text.startswith("Organism double_mc-s0-abcdef is a valid test")
        and "did not raise OOD accuracy" in text
    )


def test_a_missing_row_names_the_chapter_that_writes_it():
    rows = [r for r in _rows([(0.0, 0.0)]) if r["trained"] or r["method"] == "base"]  # chapter 04 did not run
    with pytest.raises(results.MissingRowsError, match="run 04_base_model_checks first"):
        gates.validity(rows)


def test_gate_rows_cover_every_method(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    assert models.residual_hooks(base) == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
    ]
    cfg = gate_search.GateConfig(seeds=[0], n_examples=32)
    rows = gate_search.gate_rows(base, task, tmp_path, cfg, organism="double_mc-s0-abcdef")
    keys = {(r["method"], r["directions"], r["param"], r["trained"]) for r in rows}
    assert keys == {
        ("base", "none", "", False),
        ("zero", "oracle", "", False),
        ("zero", "random_oracle", "", False),
        ("plain", "none", "", True),
        ("zero", "oracle", "", True),
        ("zero", "random_oracle", "", True),
    }
    assert {r["split"] for r in rows} == set(task.eval_splits) and {r["organism"] for r in rows} == {
        "double_mc-s0-abcdef"
    }
    out = gates.validity(rows)
    assert set(out) == {"V1_base", "V2_plain_learns_spurious", "V3_oracle_removes_spurious", "valid"}
    assert not out["V1_base"]["holds"] and not out["valid"]["holds"]  # an untrained model answers nothing


def test_pca_direction_sets_share_hooks_and_ranks(tmp_path):
    task = make_task("double_mc", {"n_eval": 40})
    base = models.build_model(models.ModelConfig(), len(task.vocab), seed=0)
    cfg = gate_search.GateConfig(
        seeds=[0], n_examples=64, threshold=0.0
    )  # threshold 0: the oracle rule keeps what beats the intended concept
    finetuned = models.copy_model(base)
    finetune(finetuned, task.finetune_dataset(64), FinetuneConfig(n_examples=64), progress=False)
    sets = gate_search.pca_interventions(base, finetuned, task, cfg)
    assert set(sets) == {"pca", "topk_pca", "random", "oracle_pca"}
    hooks = [s.hook_name for s in sets["pca"].subspaces]
    for name in ("topk_pca", "random"):
        assert [s.hook_name for s in sets[name].subspaces] == hooks
        assert [s.k for s in sets[name].subspaces] == [s.k for s in sets["pca"].subspaces]
    unreachable = gate_search.pca_interventions(base, finetuned, task, gate_search.GateConfig(threshold=1.01))
    assert set(unreachable) == {
        "pca",
        "topk_pca",
        "random",
    }  # the oracle keeps nothing; the allowed rule is untouched by its threshold
    for name in ("pca", "topk_pca", "random"):
        assert [(s.hook_name, s.k) for s in unreachable[name].subspaces] == [
            (s.hook_name, s.k) for s in sets[name].subspaces
        ]
