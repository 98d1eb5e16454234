"""Iterated CAFT: does the model route around the ablation, and does a second look catch it?

Round 1 is chapter 05's CAFT: the base fine-tuned with a direction set zero-ablated. Round r + 1
fine-tunes the base again with round r's directions plus the directions the interpreter chooses
(chapter 03's explainer and rule, the same allowed inputs: nothing of the OOD data) among the
principal directions of round r's CAFT model minus the base on the training data, *outside* the
directions already ablated (:func:`residual_pcs`). The control adds, each round, random directions
of the same rank at the same hooks (:func:`random_extension`). A round in which the rule finds no
concept reading adds nothing: iteration has saturated (:class:`Round` says so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from caft_tl.core import models, stats
from caft_tl.core.data import TokenDataset
from caft_tl.core.run_dir import RunDir
from caft_tl.core.subspace import Subspace, random_subspace
from caft_tl.diffing.diffs import MomentStats, collect_diff_stats
from caft_tl.directions import explain, pca
from caft_tl.directions.information import InterpretationInputs
from caft_tl.interventions.intervention import Intervention
from caft_tl.training.finetunes import FinetuneJob, run_finetunes
from caft_tl.training.loop import FinetuneConfig

INTERPRETED, CONTROL = "interpreted", "random_control"


def project_out(stats: MomentStats, basis: torch.Tensor) -> MomentStats:
    """The moments of the vectors with their component in ``basis`` removed (exact: P x with
    P = I − Q Qᵀ gives total P·total and outer P·outer·P).

    Args:
        stats: moments of vectors [d_model].
        basis: Q [d_model, k], orthonormal columns.

    Returns:
        the :class:`MomentStats` of the projected vectors.

    Example:
        outside = project_out(moments[hook]["diff"], iv.subspaces[0].basis)
    """
    q = basis.to(torch.float64)
    p = torch.eye(q.shape[0], dtype=torch.float64) - q @ q.T
    return MomentStats(stats.count, p @ stats.total, p @ stats.outer @ p)


def ablated_bases(iv: Intervention) -> dict[str, torch.Tensor]:
    """``{hook: Q [d_model, k]}`` of an intervention's subspaces."""
    return {s.hook_name: s.basis for s in iv.subspaces}


def residual_pcs(diff: dict[str, MomentStats], iv: Intervention, n_pcs: int) -> dict[str, Subspace]:
    """The top ``n_pcs`` principal directions of each hook's diff outside ``iv``'s subspace there.

    Args:
        diff: ``{hook: MomentStats}`` of a model's diff (e.g. ``collect_diff_stats(...)[h]["diff"]``).
        iv: the directions already ablated; a hook it does not touch is taken whole.
        n_pcs: directions per hook.

    Returns:
        ``{hook: Subspace}`` orthogonal to ``iv``'s subspace at each hook.

    Example:
        pcs = residual_pcs({h: moments[h]["diff"] for h in hooks}, iv, n_pcs=4)
    """
    bases = ablated_bases(iv)
    out = {}
    for hook, moments in diff.items():
        if hook in bases:
            moments = project_out(moments, bases[hook])
        sub, _ = pca.pca(moments, n_pcs, hook)
        if hook in bases:  # exact orthogonality to the ablated directions, whatever eigh's rounding
            q = bases[hook].to(sub.basis.dtype)
            basis = sub.basis - q @ (q.T @ sub.basis)
            sub = dataclasses.replace(sub, basis=basis / basis.norm(dim=0, keepdim=True))
        out[hook] = sub
    return out


def extend(iv: Intervention, new: dict[str, Subspace], name: str) -> Intervention:
    """``iv`` with more directions: per hook, its basis followed by ``new``'s (which must be
    orthogonal to it, as :func:`residual_pcs` and :func:`random_extension` make them); hooks only in
    ``new`` are appended. Reference means are kept.

    Example:
        iv2 = extend(iv, {h: pcs[h].select(chosen[h]) for h in chosen if chosen[h]}, "pca+iter")
    """
    subs = {s.hook_name: s for s in iv.subspaces}
    for hook, sub in new.items():
        if hook in subs:
            old = subs[hook]
            overlap = (old.basis.T @ sub.basis).abs().max().item()
            if overlap > 1e-3:
                raise ValueError(
                    f"the new directions at {hook!r} are not orthogonal to the ablated ones "
                    f"(|cos| up to {overlap:.3g}); make them with residual_pcs or random_extension"
                )
            subs[hook] = dataclasses.replace(
                old, basis=torch.cat([old.basis, sub.basis], 1), labels=[*old.labels, *sub.labels]
            )
        else:
            subs[hook] = sub
    return dataclasses.replace(iv, subspaces=list(subs.values()), name=name)


def random_extension(iv: Intervention, ranks: dict[str, int], seed: int) -> dict[str, Subspace]:
    """Random directions, ``ranks[hook]`` of them at each hook, orthogonal to ``iv``'s subspace
    there: the control of an interpreted round of the same rank.

    Example:
        extra = random_extension(iv, {"blocks.0.hook_resid_post": 1}, seed=2)
    """
    bases, d_model = ablated_bases(iv), iv.subspaces[0].d_model
    out = {}
    for i, (hook, k) in enumerate(sorted(ranks.items())):
        if k < 1:
            continue
        draw = random_subspace(d_model, k, hook, seed=seed * 1000 + i).basis
        if hook in bases:
            q = bases[hook]
            draw = draw - q @ (q.T @ draw)
            draw = torch.linalg.qr(draw).Q
        out[hook] = Subspace(hook, draw, [f"random{j}" for j in range(k)], {"method": "random", "seed": seed})
    return out


@dataclass(frozen=True)
class Round:
    """What the interpreter chose from one round's CAFT model.

    Args:
        chosen: ``{hook: [index of residual PC, ...]}`` that passed chapter 03's rule.
        readout: the explainer's table of the residual PCs.
        saturated: True when the rule found no concept reading (nothing is added).
    """

    chosen: dict[str, list[int]]
    readout: pd.DataFrame
    saturated: bool

    @property
    def ranks(self) -> dict[str, int]:
        return {h: len(c) for h, c in self.chosen.items() if c}


def interpret_round(
    base,
    pcs: dict[str, Subspace],
    inputs: InterpretationInputs,
    min_detection: float = 0.7,
    window: int = 4,
) -> Round:
    """Chapter 03's explainer and rule on a round's residual PCs; unlike chapter 03, no fallback:
    a round whose PCs carry no concept reading adds no directions.

    Example:
        rnd = interpret_round(base, residual_pcs(diff, iv, 4), inputs)
    """
    readout = explain.explain_subspaces(base, pcs, inputs, window=window)
    choice = explain.choose(readout, inputs, list(pcs), min_detection)
    chosen = {h: [] for h in pcs} if choice.fallback else choice.chosen
    return Round(chosen, readout, saturated=not any(chosen.values()))


def next_interventions(
    interpreted: Intervention, control: Intervention, pcs: dict[str, Subspace], rnd: Round, r: int, name: str
) -> tuple[Intervention, Intervention]:
    """Round ``r``'s two interventions from round ``r - 1``'s: the interpreted arm adds the chosen
    residual PCs, the control arm the same number of random directions at the same hooks.

    Example:
        iv_interp, iv_ctrl = next_interventions(iv_interp, iv_ctrl, pcs, rnd, r=2, name="pca")
    """
    if rnd.saturated:
        raise ValueError(f"round {r - 1} chose no directions (saturated): there is no round {r}")
    picked = {
        h: dataclasses.replace(p.select(rnd.chosen[h]), labels=[f"r{r}·PC{i}" for i in rnd.chosen[h]])
        for h, p in pcs.items()
        if rnd.chosen.get(h)
    }
    return (
        extend(interpreted, picked, f"{name}+iterated"),
        extend(control, random_extension(control, rnd.ranks, seed=r), f"{name}+random"),
    )


@dataclass(frozen=True)
class IterationConfig:
    """How iterated CAFT runs.

    Args:
        n_rounds: rounds in all, round 1 being chapter 05's CAFT (1 runs nothing new).
        n_pcs: residual principal directions per hook the interpreter reads each round.
        min_detection: chapter 03's rule: held-out detection score a concept label needs.
        window: tokens up to the peak the explainer reads.

    Example:
        IterationConfig(n_rounds=3, n_pcs=4)
    """

    n_rounds: int = 3
    n_pcs: int = 4
    min_detection: float = 0.7
    window: int = 4

    def __post_init__(self) -> None:
        for name in ("n_rounds", "n_pcs", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IterationConfig.{name} = {value!r}; valid: an int >= 1")
        if not 0.0 < self.min_detection <= 1.0:
            raise ValueError(f"IterationConfig.min_detection = {self.min_detection!r}; valid: in (0, 1]")


def run_rounds(
    run_dir: str | RunDir,
    base,
    world,
    first: Intervention,
    name: str,
    cfgs: list[FinetuneConfig],
    diff_data: TokenDataset,
    hooks: list[str],
    positions: str,
    inputs: InterpretationInputs,
    it: IterationConfig,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[Round]]:
    """Iterated CAFT from the direction set ``first`` (saved as ``name`` by chapter 03).

    Round 1 is ``first`` zero-ablated, one fine-tune per config in ``cfgs`` (one per seed; the same
    jobs as chapter 05's, so they are read back); each later round's two arms are fine-tuned with
    the same configs. The interpreter reads the first config's round-r CAFT model diffed against the
    base on ``diff_data`` at ``hooks`` (training data only: the information rule).

    Args:
        run_dir: the organism's run directory; base, world: chapter 00's model and task.
        first: round 1's intervention; name: its direction set's name.
        cfgs: one fine-tuning config per seed.
        diff_data, hooks, positions: what is diffed (chapter 02's hooks and positions).
        inputs: chapter 03's allowed interpretation inputs.
        it: the rounds and the rule's settings.

    Returns:
        (results rows with ``round``, ``arm`` and ``rank`` columns — round 1 once per arm —,
        the interpreter's :class:`Round` after each round it read).

    Example:
        rows, rounds = run_rounds(run, base, world, iv, "pca", cfgs, data, hooks, "response", inputs,
                                  IterationConfig(n_rounds=3))
    """
    if first.mode != "zero":
        raise ValueError(f"iterated CAFT starts from a zero-ablation (CAFT) set; {name!r} is {first.mode!r}")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    arms = {INTERPRETED: first, CONTROL: first}
    frames, rounds = [], []
    for r in range(1, it.n_rounds + 1):
        todo = {INTERPRETED: arms[INTERPRETED]} if r == 1 else arms
        param = "" if r == 1 else f"round={r}"
        jobs = [
            FinetuneJob(
                cfg, "zero", iv.name if r > 1 else name, param, iv, keep_model=arm == INTERPRETED and i == 0
            )
            for arm, iv in todo.items()
            for i, cfg in enumerate(cfgs)
        ]
        rows = pd.DataFrame(
            run_finetunes(run, base, world, jobs, progress=progress, desc=f"iterated CAFT round {r}")
        )
        for arm in arms:
            part = rows if r == 1 else rows[rows["directions"] == arms[arm].name]
            frames.append(part.assign(round=r, arm=arm, rank=arms[arm].rank))
        if r == it.n_rounds:
            break
        model, _ = models.load_model(
            run.require_finetune(
                "zero", jobs[0].directions, param, cfgs[0].seed, file="model.safetensors"
            ).parent
        )
        diff = collect_diff_stats(base, model, diff_data, hooks, positions=positions, progress=False)
        pcs = residual_pcs({h: diff[h]["diff"] for h in hooks}, arms[INTERPRETED], it.n_pcs)
        rnd = interpret_round(base, pcs, inputs, it.min_detection, it.window)
        rounds.append(rnd)
        if rnd.saturated:
            break
        arms[INTERPRETED], arms[CONTROL] = next_interventions(
            arms[INTERPRETED], arms[CONTROL], pcs, rnd, r + 1, name
        )
    return pd.concat(frames, ignore_index=True), rounds


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval over seeds per arm, round, split and metric (with each arm's rank).

    Example:
        table = summarise(rows).query("split == 'ood'")
    """
    ranks = rows.groupby(["arm", "round"], as_index=False)["rank"].first()
    return stats.summarise(rows, by=("arm", "round", "split", "metric")).merge(ranks, on=["arm", "round"])


def takeaway(summary: pd.DataFrame, split: str, metric: str, rounds: list[Round], n_rounds: int) -> str:
    """One paragraph from the rows: the interpreted arm and the control on ``split`` by round, and
    where iteration stopped.

    Example:
        print(takeaway(summarise(rows), "chat", "misalignment_rate", rounds, 3))
    """
    part = summary[(summary["split"] == split) & (summary["metric"] == metric)]
    if part.empty:
        return f"No iterated-CAFT rows for {split} {metric}."

    def cell(arm: str, r: int) -> str:
        row = part[(part["arm"] == arm) & (part["round"] == r)]
        if row.empty:
            return "—"
        row = row.iloc[0]
        return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] (rank {int(row['rank'])})"

    last = int(part["round"].max())
    lines = [
        f"Iterated CAFT, {split} {metric} (mean [95% interval over seeds]): round 1 {cell(INTERPRETED, 1)}"
    ]
    for r in range(2, last + 1):
        lines.append(f"round {r}: interpreted {cell(INTERPRETED, r)}, random control {cell(CONTROL, r)}")
    if rounds and rounds[-1].saturated:
        lines.append(
            f"iteration stopped after round {len(rounds)}: the interpreter found no concept reading "
            "in that CAFT model's diff outside the ablated directions"
        )
    elif last < n_rounds:
        lines.append(f"{n_rounds} rounds were asked, {last} ran")
    return "; ".join(lines) + "."
