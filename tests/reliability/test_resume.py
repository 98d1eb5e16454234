"""Interrupted runs resume exactly; the same seed gives bit-identical metrics across processes."""

import os
import signal
import time

import pytest
import torch

from caft_tl.core import files, models
from caft_tl.training import finetunes, loop
from caft_tl.training.loop import FinetuneConfig, finetune

from .conftest import worker


class _Interrupt:
    """A stand-in intervention whose hooks raise at the N-th training step (a crash mid-epoch)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def fwd_hooks(self, batch):
        self.calls += 1
        if self.calls > self.at:
            raise KeyboardInterrupt
        return []


def test_resume_in_process_equals_uninterrupted(organism_dir, world, tmp_path):
    base, _ = models.load_model(organism_dir)
    data = world.finetune_dataset(120, seed=0)
    cfg = FinetuneConfig(n_examples=120, batch_size=8, epochs=2, seed=4)  # 30 steps over 2 epochs
    ref = models.copy_model(base)
    ref_losses = finetune(ref, data, cfg, progress=False)

    ckpt = tmp_path / "ckpt.safetensors"
    first = models.copy_model(base)
    with pytest.raises(KeyboardInterrupt):
        finetune(first, data, cfg, _Interrupt(at=20), progress=False, checkpoint=ckpt, checkpoint_every=6)
    assert ckpt.exists()  # last checkpoint at step 18, in the second epoch
    resumed = models.copy_model(base)  # a fresh process would start from the base weights
    losses = finetune(resumed, data, cfg, progress=False, checkpoint=ckpt, checkpoint_every=6)
    assert losses == ref_losses
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_kill_9_mid_run_then_same_command_resumes(organism_dir, world, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    proc = worker("finetune", organism_dir, run_dir, 4000)  # 500 steps
    deadline = time.time() + 120
    while not list(run_dir.glob("finetunes/*/checkpoint-*.safetensors")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = run_dir / "finetunes" / "plain-seed3"
    assert not (folder / "metrics.json").exists()

    base, _ = models.load_model(organism_dir)
    cfg = FinetuneConfig(n_examples=4000, batch_size=8, seed=3)
    resumed_from = []
    original = loop.load_checkpoint

    def spy(*args):
        progress, rng = original(*args)
        resumed_from.append(progress["step"])
        return progress, rng

    monkeypatch.setattr(loop, "load_checkpoint", spy)
    rows, _ = finetunes.run_finetune(run_dir, base, world, cfg, progress=False, organism="persona_em-s0-test")
    assert len(resumed_from) == 1 and 0 < resumed_from[0] < 500  # it resumed mid-run
    resumed_losses = files.read_json(folder / "metrics.json")["losses"]
    ref_rows, _ = finetunes.run_finetune(
        tmp_path / "ref", base, world, cfg, progress=False, organism="persona_em-s0-test"
    )
    assert rows == ref_rows
    assert (
        resumed_losses
        == files.read_json(tmp_path / "ref" / "finetunes" / "plain-seed3" / "metrics.json")["losses"]
    )
    assert not list(folder.glob("checkpoint-*"))  # removed once the run finished


def test_same_seed_is_bit_identical_across_processes(organism_dir, tmp_path):
    procs = [worker("finetune", organism_dir, tmp_path / f"run{i}", 160) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    a, b = (
        files.read_json(tmp_path / f"run{i}" / "finetunes" / "plain-seed3" / "metrics.json") for i in range(2)
    )
    assert a["values"] == b["values"] and a["losses"] == b["losses"]


def test_truncated_files_give_one_line_errors(organism_dir, world, tmp_path):
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(organism_dir, bad)
    blob = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(files.CorruptFileError, match=r"its content changed since caft-tl wrote it") as e:
        models.load_model(bad)  # the cached organism's checksum catches it first
    assert "\n" not in str(e.value)
    (bad / files.MANIFEST).unlink()  # a folder without checksums: the safetensors reader catches it
    with pytest.raises(files.CorruptFileError, match=r"truncated or corrupted .*delete it") as e:
        models.load_model(bad)
    assert "\n" not in str(e.value)

    base, _ = models.load_model(organism_dir)
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(files.CorruptFileError, match="cannot read"):
        finetune(
            models.copy_model(base),
            world.finetune_dataset(16),
            FinetuneConfig(n_examples=16),
            progress=False,
            checkpoint=ckpt,
        )
