"""The run directory: where each chapter keeps its artefacts, and which chapter writes each one.

Chapters talk to each other only through these artefacts. :data:`ARTEFACTS` names every one with
its path (relative to the run directory) and the chapter that writes it; :class:`RunDir` gives
their paths, and :meth:`RunDir.require` raises :class:`MissingArtefactError` naming the chapter to
run first. A new chapter that writes a new artefact adds one line to :data:`ARTEFACTS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from caft_tl.core import files, results
from caft_tl.core.files import MissingArtefactError


@dataclass(frozen=True)
class Artefact:
    """One artefact of a run: its path (``{name}`` filled by the caller) and the chapter that writes it."""

    path: str
    chapter: str
    what: str


#: every artefact a chapter writes, by name
ARTEFACTS = {
    "organism": Artefact("organism", "00_organism", "the organism (weights, config, pre-training losses)"),
    "real_model": Artefact(
        "real_model.json", "00_organism", "the real model, adapters and task card a run studies instead"
    ),
    "finetune_config": Artefact(
        "finetune_config.json", "01_plain_finetune", "seeds and budget of the fine-tunes"
    ),
    "plain": Artefact("finetunes/{name}", "01_plain_finetune", "a plain fine-tune (rows, losses, weights)"),
    "finetune": Artefact("finetunes/{name}", "05_caft", "a fine-tune under an intervention"),
    "diffs": Artefact(
        "diffs.safetensors",
        "02_activation_diffing",
        "moments of ft − base at the diffed hooks (+ diffs.json)",
    ),
    "saes": Artefact("saes/saes.json", "02_activation_diffing", "the manifest of the run's SAEs"),
    "subspaces": Artefact(
        "subspaces/{name}", "03_interpret_directions", "a direction set, saved as an Intervention"
    ),
    "choice": Artefact(
        "subspaces/choice.json", "03_interpret_directions", "the PCs chosen per hook and the rule's settings"
    ),
    "sae_choice": Artefact(
        "subspaces/sae_choice.json", "03_interpret_directions", "the SAE latents ranked and chosen per hook"
    ),
    "results": Artefact(
        results.RESULTS_FILE, "01_plain_finetune", "the results rows (chapters 01, 04, 05 add to it)"
    ),
    "gates": Artefact("gates.json", "07_gates", "the gates' verdicts"),
    "leakage": Artefact(
        "leakage.csv",
        "09_route_around",
        "the CAFT models' diffs: energy in the ablated subspace, concept shifts",
    ),
    "em_gates": Artefact(
        "em_gates.json",
        "python -m caft_tl.runner.suite (its population summary)",
        "gates E1–E4 of an em_two_routes organism",
    ),
    "iterated": Artefact(
        "iterated.csv", "10_iterated_caft", "the iterated-CAFT rows (round, arm, rank per results row)"
    ),
    "training_length": Artefact(
        "training_length.csv", "10_iterated_caft", "the longer-training rows (length per results row)"
    ),
}


class RunDir(os.PathLike):
    """A run directory (``runs/default/<task>``): the paths of its artefacts, checked on request."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:  # a RunDir is a path-like: Path(run), open(run / ...) work
        return str(self.root)

    def __truediv__(self, other: str) -> Path:
        return self.root / other

    def mark(self) -> RunDir:
        """Make the folder a run directory: its artefacts get checksums
        (:func:`caft_tl.core.files.mark_run_dir`)."""
        files.mark_run_dir(self.root)
        return self

    def path(self, artefact: str, name: str = "") -> Path:
        """Where ``artefact`` lives (whether or not it exists yet); a ``/`` in ``name`` (a draw of
        the null distribution, ``random/3``) is written ``_`` (one folder, ``random_3``)."""
        if artefact not in ARTEFACTS:
            raise ValueError(f"unknown artefact {artefact!r}; valid: {', '.join(ARTEFACTS)}")
        return self.root / ARTEFACTS[artefact].path.format(name=name.replace("/", "_"))

    def require(self, artefact: str, name: str = "", file: str = "") -> Path:
        """The path of ``artefact`` (or of ``file`` inside it), or :class:`MissingArtefactError`
        naming the chapter that writes it."""
        target = self.path(artefact, name) / file if file else self.path(artefact, name)
        if not target.exists():
            a = ARTEFACTS[artefact]
            raise MissingArtefactError(
                f"missing {a.what} ({artefact}) at {str(target)!r}: run {a.chapter} first (same run_dir)"
            )
        return target

    # ------------------------------------------------------------------ named shortcuts
    @property
    def results(self) -> Path:
        return self.path("results")

    @property
    def notebooks(self) -> Path:
        """Executed copies of the chapters (written by the suite)."""
        return self.root / "notebooks"

    def organism_spec(self) -> dict:
        """The organism's design: ``{task, task_cfg, model, pretrain}`` (chapter 00)."""
        return files.read_json(self.require("organism", file="config.json"))["meta"]["spec"]

    @property
    def organism_id(self) -> str:
        """The ``organism`` column of this run's rows (:func:`caft_tl.core.results.organism_id`; a
        real model's: ``real:<model>``, chapter 00's ``real_model.json``)."""
        if (real := self.path("real_model")).exists():
            return files.read_json(real)["organism"]
        spec = self.organism_spec()
        return results.organism_id(spec["task"], spec["pretrain"]["seed"], files.config_hash(spec))

    def finetune(
        self, method: str = "plain", directions: str = "none", param: str = "", seed: int = 0
    ) -> Path:
        """The folder of one fine-tuning run: ``finetunes/<method>[-<directions>][-<param>]-seed<seed>``."""
        key = "-".join(
            x
            for x in (
                method,
                directions if directions != "none" else "",
                param.replace("=", ""),
                f"seed{seed}",
            )
            if x
        )
        return self.path("plain" if method in ("plain", "fewer_examples") else "finetune", key)

    def require_finetune(
        self,
        method: str = "plain",
        directions: str = "none",
        param: str = "",
        seed: int = 0,
        file: str = "metrics.json",
    ) -> Path:
        """A file of a finished fine-tuning run, or the error naming the chapter that runs it."""
        folder = self.finetune(method, directions, param, seed)
        return self.require(
            "plain" if method in ("plain", "fewer_examples") else "finetune", folder.name, file
        )

    def read_results(self):
        """This run's results table (:func:`caft_tl.core.results.read`)."""
        return results.read(self.require("results"))
