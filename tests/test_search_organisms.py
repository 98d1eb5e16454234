import importlib.util
import json
from pathlib import Path

import pandas as pd

_spec = importlib.util.spec_from_file_location(
    "search_organisms", Path(__file__).parents[1] / "scripts" / "search_organisms.py"
)
search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search)


def test_grid_and_rows(tmp_path):
    args = search.argparse.Namespace(
        task="pronoun_profession",
        task_cfg='{"jitter": 2}',
        pretrain_seeds=[0, 1],
        pretrain_steps=[100],
        variant=["a={}", 'b={"corpus_purity": 0.8}'],
        seeds=[0],
        n_examples=32,
        pretrain_threads=1,
        pretrain_decay=0.0,
    )
    specs = search.organisms(args)
    assert [s["organism"] for s in specs] == [
        "a-steps100-seed0",
        "a-steps100-seed1",
        "b-steps100-seed0",
        "b-steps100-seed1",
    ]
    assert specs[2]["task_cfg"] == {"jitter": 2, "corpus_purity": 0.8}
    verdicts = {
        "V1_base": {"holds": True, "single_intended": 0.99},
        "V2_plain_learns_spurious": {"holds": False, "id": [1.0, 0.98]},
        "V3_oracle_removes_spurious": {"holds": True, "untrained": {"single_intended": 0.9}},
    }
    results = {
        specs[0]["organism"]: {"spec": specs[0], "status": "ok", "seconds": 3.0, "verdicts": verdicts},
        specs[2]["organism"]: {
            "spec": specs[2],
            "status": "error (exit 1)",
            "seconds": 1.0,
            "error": "ValueError: x",
        },
    }
    search.write_csv(results, specs, tmp_path / "search.csv")
    df = pd.read_csv(tmp_path / "search.csv", dtype=str, keep_default_na=False)
    assert df["organism"].tolist() == [
        "a-steps100-seed0",
        "b-steps100-seed0",
    ]  # grid order, finished ones only
    ok, err = df.iloc[0], df.iloc[1]
    assert ok["gates_held"] == "+-+" and ok["V2_plain_learns_spurious.id"] == "1.0/0.98"
    assert ok["V3_oracle_removes_spurious.untrained.single_intended"] == "0.9" and json.loads(
        ok["task_cfg"]
    ) == {"jitter": 2}
    assert err["status"] == "error (exit 1)" and err["error"] == "ValueError: x" and err["gates_held"] == ""
    assert not (tmp_path / "search.csv.tmp").exists()


def test_a_thread_count_and_a_decayed_rate_name_their_organisms():
    args = search.argparse.Namespace(
        task="double_mc",
        task_cfg="{}",
        pretrain_seeds=[3],
        pretrain_steps=[100],
        variant=None,
        seeds=[0],
        n_examples=32,
        pretrain_threads=2,
        pretrain_decay=0.0,
    )
    (spec,) = search.organisms(args)
    assert (
        spec["organism"] == "v0-steps100-seed3-threads2"
        and spec["pretrain_threads"] == 2
        and "pretrain_decay" not in spec
    )
    assert (
        search.csv_row({"spec": spec, "status": "ok", "seconds": 1.0, "verdicts": {}})["pretrain_threads"]
        == 2
    )
    (spec,) = search.organisms(
        search.argparse.Namespace(**{**vars(args), "pretrain_threads": 1, "pretrain_decay": 0.5})
    )
    assert spec["organism"] == "v0-steps100-decay0.5-seed3" and spec["pretrain_decay"] == 0.5
    assert (
        search.csv_row({"spec": spec, "status": "ok", "seconds": 1.0, "verdicts": {}})["pretrain_decay"]
        == 0.5
    )


def test_validity_tables_count_valid_organisms_per_design_and_thread_count(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "validity_tables", search.REPO / "scripts" / "validity_tables.py"
    )
    vt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vt)
    rows = []
    for seed, (v1, v2, v3), threads in [
        (0, (True, True, True), 1),
        (1, (True, False, True), 1),
        (2, (True, True, True), 1),
        (0, (True, True, False), 2),
    ]:
        rows.append(
            {
                "organism": f"a-seed{seed}",
                "task": "double_mc",
                "variant": "a",
                "pretrain_seed": seed,
                "pretrain_steps": 100,
                "pretrain_threads": threads,
                "task_cfg": '{"lean": 0.1}',
                "status": "ok",
                "V1_base.holds": v1,
                "V2_plain_learns_spurious.holds": v2,
                "V3_oracle_removes_spurious.holds": v3,
                "oracle_caft_raises_ood.caft_ood": "0.9/1.0",
                "oracle_caft_raises_ood.plain_ood": "0.0/0.1",
            }
        )
    rows.append({**rows[0], "organism": "broken", "status": "error (exit 1)"})
    pd.DataFrame(rows).to_csv(tmp_path / "search.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{vt.BEGIN}\nold\n{vt.END}\nrest\n")
    assert (
        vt.main([str(tmp_path / "search.csv"), "--out", str(tmp_path / "V.md"), "--readme", str(readme)]) == 0
    )
    lines = [l for l in (tmp_path / "V.md").read_text().splitlines() if l.startswith("| double_mc")]
    assert lines == [
        "| double_mc | lean=0.1 | 1 | 3 | 2 | 67% | V2_plain_learns_spurious (1) | 0.95 | 0.05 |",
        "| double_mc | lean=0.1 | 2 | 1 | 0 | 0% | V3_oracle_removes_spurious (1) | nan | nan |",
    ]
    # a decayed pre-training rate is another design
    pd.DataFrame([{**rows[0], "pretrain_decay": 0.5}]).to_csv(tmp_path / "decay.csv", index=False)
    assert vt.main([str(tmp_path / "decay.csv"), "--out", str(tmp_path / "D.md")]) == 0
    assert (
        "| double_mc | lean=0.1, pre-training rate decayed over the last 50% | 1 | 1 | 1 | 100% |"
        in (tmp_path / "D.md").read_text()
    )
    text = readme.read_text()
    assert (
        text.startswith("intro\n") and text.endswith("rest\n") and "\nold\n" not in text and lines[0] in text
    )
    assert vt.main([str(tmp_path / "nope.csv"), "--out", str(tmp_path / "V.md")]) == 2
