"""Gates E1–E4 of a population of ``em_two_routes`` organisms without notebooks
(``python -m caft_tl.runner.em_gate_search``): one design × several pre-training seeds, pre-trained
together (:func:`caft_tl.training.pretrain.load_or_pretrain_many`), each organism measured on its
own (base inference, ground-truth directions, the persona ablation on the untrained base, plain
and helpful-chat-mixed fine-tunes per seed). Writes ``<out>/rows.csv`` (results rows) and
``<out>/verdicts.csv`` (one row per organism; :func:`caft_tl.evaluation.em_gates.verdicts`) and
prints the share of valid organisms. Runs no CAFT."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from caft_tl.core import files, models
from caft_tl.evaluation import em_gates
from caft_tl.evaluation.em_gates import EMGateBudget, EMGateThresholds
from caft_tl.organism import make_task
from caft_tl.training.pretrain import PretrainConfig, load_or_pretrain_many, model_config, platform

TASK = "em_two_routes"
ROWS_FILE, VERDICTS_FILE = "rows.csv", "verdicts.csv"


@dataclass
class EMSearchConfig:
    """One design (``task_cfg``: fields of :class:`~caft_tl.organism.em_two_routes.EMTwoRoutesConfig`)
    and the budgets of its gate run."""

    task_cfg: dict = field(default_factory=dict)
    model_cfg: dict = field(
        default_factory=dict
    )  # fields of caft_tl.core.models.ModelConfig (default: the organism's)
    pretrain_steps: int = 1500
    pretrain_decay: float = (
        0.0  # share of the last pre-training steps over which the rate decays to zero (PretrainConfig.decay)
    )
    pretrain_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # fine-tuning seeds (E3, E4)
    n_examples: int = 4800
    n_disambiguating: int = 1200  # E4: helpful chat examples among the n_examples
    batch_size: int = 32
    lr: float = 1e-3
    thresholds: EMGateThresholds = field(default_factory=EMGateThresholds)

    def __post_init__(self) -> None:
        make_task(TASK, self.task_cfg)  # an unknown or invalid design parameter fails here, in one line
        self.model()
        self.pretrain(0)
        if not self.pretrain_seeds or not self.seeds:
            raise ValueError(f"pretrain_seeds {self.pretrain_seeds} and seeds {self.seeds} must not be empty")
        self.budget()

    def pretrain(self, seed: int) -> PretrainConfig:
        return PretrainConfig(steps=self.pretrain_steps, seed=seed, decay=self.pretrain_decay)

    def budget(self) -> EMGateBudget:
        """The fine-tunes E3 and E4 read."""
        return EMGateBudget(
            tuple(self.seeds), self.n_examples, self.n_disambiguating, self.batch_size, self.lr
        )

    def model(self) -> models.ModelConfig:
        """The organism's architecture: the default, with the document length as context, and
        ``model_cfg`` on top."""
        return model_config(make_task(TASK, self.task_cfg), self.model_cfg)


def measure(base, task, run_dir: Path, cfg: EMSearchConfig, organism: str) -> tuple[dict, list[dict]]:
    """The verdicts of one organism and its results rows (:func:`caft_tl.evaluation.em_gates.measure`)."""
    return em_gates.measure(base, task, run_dir, organism, cfg.budget(), cfg.thresholds)


def run(out: str | Path, cfg: EMSearchConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Pre-train (or load) the population, gate every organism, write the files; the verdicts table."""
    cfg = cfg or EMSearchConfig()
    out = Path(out)
    prov = files.write_provenance(out, {"search": "em_two_routes"})  # the code this run starts from
    organisms = load_or_pretrain_many(
        TASK, cfg.task_cfg, cfg.model(), cfgs=[cfg.pretrain(s) for s in cfg.pretrain_seeds], progress=progress
    )
    table, rows = [], []
    for seed, (base, task, folder) in tqdm(
        list(zip(cfg.pretrain_seeds, organisms)), desc="organisms", disable=not progress
    ):
        organism = f"{TASK}-s{seed}-{folder.name[-8:]}"
        v, r = measure(base, task, out / organism, cfg, organism)
        rows += r
        table.append(
            {
                "organism": organism,
                "pretrain_seed": seed,
                **{g: x["holds"] for g, x in v.items()},
                "numbers": json.dumps(
                    {g: {k: x[k] for k in x if k != "holds"} for g, x in v.items() if g != "valid"},
                    default=float,
                ),
            }
        )
    files.write_csv(out / ROWS_FILE, pd.DataFrame(rows))
    verdict_table = pd.DataFrame(table)
    files.write_csv(out / VERDICTS_FILE, verdict_table)
    commit = (prov.get("git_commit") or "?")[:7] + ("+uncommitted" if prov.get("git_dirty") else "")
    files.write_json(
        out / "config.json",
        {
            "commit": commit,
            "platform": {**platform(), "batched": True},
            "task_cfg": cfg.task_cfg,
            "model_cfg": cfg.model_cfg,
            "pretrain_steps": cfg.pretrain_steps,
            "pretrain_decay": cfg.pretrain_decay,
            "pretrain_seeds": cfg.pretrain_seeds,
            "seeds": cfg.seeds,
            "n_examples": cfg.n_examples,
            "n_disambiguating": cfg.n_disambiguating,
            "thresholds": cfg.thresholds.__dict__,
        },
    )
    return verdict_table


def _design(pairs: list[str]) -> dict:
    cfg = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"design parameter {p!r} is not key=value (e.g. p_sloppy=0.3)")
        k, v = p.split("=", 1)
        cfg[k] = json.loads(v)
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/em_gate_search")
    ap.add_argument("--pretrain-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument(
        "--pretrain-decay",
        type=float,
        default=0.0,
        help="share of the last pre-training steps over which the rate decays to zero",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--design", nargs="*", default=[], help="design parameters key=value (EMTwoRoutesConfig fields)"
    )
    ap.add_argument(
        "--model", nargs="*", default=[], help="architecture key=value (ModelConfig fields, e.g. d_model=128)"
    )
    args = ap.parse_args(argv)
    cfg = EMSearchConfig(
        task_cfg=_design(args.design),
        model_cfg=_design(args.model),
        pretrain_steps=args.pretrain_steps,
        pretrain_decay=args.pretrain_decay,
        pretrain_seeds=args.pretrain_seeds,
        seeds=args.seeds,
    )
    table = run(args.out, cfg)
    gates = [c for c in table.columns if c[:1] == "E" or c == "valid"]
    print(table[["organism", *gates]].to_string(index=False))
    print(f"valid organisms: {int(table['valid'].sum())}/{len(table)}")
    for _, r in table.iterrows():
        print(r["organism"], r["numbers"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
