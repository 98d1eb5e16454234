"""Every read of a run artefact or a model folder names a broken file in one line and says what to
do; a run artefact changed after it was written (one flipped byte) is caught by its checksum."""

import multiprocessing
import shutil

import pytest
import torch

from caft_tl.core import files, models, results
from caft_tl.core.run_dir import RunDir
from caft_tl.core.subspace import load_subspaces, random_subspace, save_subspaces
from caft_tl.real import hf_models, loading
from tests._real import tiny_checkpoint
from tests.conftest import TINY


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def _leftovers(folder):
    return [p.name for p in folder.rglob("*.tmp")]


# ---------------------------------------------------------------------- model folders


def test_truncated_organism_config_names_the_file(tiny_model, tmp_path):
    models.save_model(tiny_model, tmp_path / "org", TINY)
    config = tmp_path / "org" / "config.json"
    config.write_text(config.read_text()[:30])
    for load in (
        lambda: models.load_model(tmp_path / "org"),
        lambda: loading.load(tmp_path / "org", device="cpu"),
    ):
        with pytest.raises(files.CorruptFileError) as e:
            load()
        msg = _one_line(e)
        assert msg.startswith(f"cannot read {str(config)!r}: not valid JSON, truncated or corrupted (")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2")


def _broken(hf_folder, tmp_path, case):
    bad = tmp_path / case
    shutil.copytree(hf_folder, bad)
    if case == "config":
        (bad / "config.json").write_text((hf_folder / "config.json").read_text()[:40])
    elif case == "weights":
        blob = (hf_folder / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    elif case == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (bad / name).unlink(missing_ok=True)
    return bad


@pytest.mark.parametrize(
    "case, error, message",
    [
        (
            "config",
            files.CorruptFileError,
            r"cannot read '.*/config/config.json': not valid JSON, truncated or corrupted \(.*\); re-",
        ),
        (
            "weights",
            files.CorruptFileError,
            r"cannot read '.*/weights/model.safetensors': truncated or corrupted safetensors file "
            r"\(\d+ bytes, header says \d+\); re-download the model",
        ),
        (
            "tokenizer",
            FileNotFoundError,
            r"no tokenizer in model folder '.*/tokenizer' "
            r"\(none of tokenizer.json, tokenizer.model, vocab.json\); "
            r"copy the tokenizer files",
        ),
    ],
)
@pytest.mark.parametrize("load", [loading.load, hf_models.load_hf])
def test_broken_hf_folder_names_the_file(hf_folder, tmp_path, case, error, message, load):
    with pytest.raises(error, match=message) as e:
        load(_broken(hf_folder, tmp_path, case), device="cpu")
    _one_line(e)


# ---------------------------------------------------------------------- checksums of run artefacts


@pytest.fixture
def run(tmp_path):
    return RunDir(tmp_path / "run").mark()


def _flip_last_byte(path):
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))


def test_a_flipped_byte_in_tensor_data_is_caught(run):
    path = run / "diffs.safetensors"
    files.write_tensors(path, {"x": torch.arange(64, dtype=torch.float32)})
    assert files.read_json(run / files.MANIFEST)["sha256"]["diffs.safetensors"] == files.sha256_file(path)
    _flip_last_byte(path)  # still a valid safetensors file: it loads, with one value changed
    from safetensors.torch import load_file

    assert not torch.equal(load_file(str(path))["x"], torch.arange(64, dtype=torch.float32))
    with pytest.raises(files.CorruptFileError) as e:
        files.read_tensors(path)
    assert _one_line(e).startswith(
        f"cannot read {str(path)!r}: its content changed since caft-tl wrote it (sha256 "
    )
    assert _one_line(e).endswith("in checksums.json); delete it and re-run the step that wrote it")


def test_json_csv_and_subspace_artefacts_are_checked(run):
    files.write_json(run / "finetune_config.json", {"seeds": [0, 1]})
    (run / "finetune_config.json").write_text((run / "finetune_config.json").read_text().replace("1", "7"))
    with pytest.raises(files.CorruptFileError, match=r"finetune_config.json': its content changed"):
        files.read_json(run / "finetune_config.json")

    row = dict(
        task="t",
        organism="o",
        method="plain",
        directions="none",
        param="",
        trained=True,
        seed=0,
        split="in",
        metric="m",
        value=0.5,
    )
    results.append(run.results, [row])
    assert len(results.read(run.results)) == 1
    run.results.write_text(run.results.read_text().replace("0.5", "0.6"))
    with pytest.raises(files.CorruptFileError, match=r"results.csv': its content changed"):
        results.read(run.results)
    with pytest.raises(files.CorruptFileError, match=r"results.csv': its content changed"):
        results.append(run.results, [row])

    save_subspaces(
        run / "subspaces" / "pca" / "subspaces", [random_subspace(8, 2, "blocks.0.hook_resid_post")]
    )
    assert len(load_subspaces(run / "subspaces" / "pca" / "subspaces")) == 1
    _flip_last_byte(run / "subspaces" / "pca" / "subspaces.safetensors")
    with pytest.raises(
        files.CorruptFileError, match=r"subspaces/pca/subspaces.safetensors': its content changed"
    ):
        load_subspaces(run / "subspaces" / "pca" / "subspaces")
    assert not _leftovers(run.root)


def test_only_run_directories_get_checksums_and_a_failed_write_leaves_nothing(tmp_path, run):
    files.write_json(tmp_path / "elsewhere" / "x.json", {"a": 1})
    assert not (tmp_path / "elsewhere" / files.MANIFEST).exists()
    files.write_provenance(tmp_path / "suite_run", {})  # the suite's run directories are marked
    assert files.run_root(tmp_path / "suite_run" / "finetunes" / "a") == tmp_path / "suite_run"

    files.write_json(run / "a.json", {"v": 1})
    before = (run / files.MANIFEST).read_text()
    with pytest.raises(RuntimeError), files.atomic_write(run / "a.json") as f:
        f.write('{"v": 2')
        raise RuntimeError("crash mid-write")
    assert files.read_json(run / "a.json") == {"v": 1} and (run / files.MANIFEST).read_text() == before
    assert not _leftovers(run.root)


def test_a_kill_between_rename_and_manifest_update_is_not_a_false_mismatch(run, monkeypatch):
    files.write_json(run / "a.json", {"v": 1})
    real, calls = files._write_manifest, []

    def dies_after_rename(folder, entries):
        calls.append(1)
        if len(calls) == 2:  # the second update comes after the rename: die there
            raise KeyboardInterrupt
        real(folder, entries)

    monkeypatch.setattr(files, "_write_manifest", dies_after_rename)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(run / "a.json", {"v": 2})
    monkeypatch.setattr(files, "_write_manifest", real)
    assert files.read_json(run / "a.json") == {"v": 2}  # new file, manifest accepts old or new
    files.write_json(run / "a.json", {"v": 3})
    assert files.read_json(run / files.MANIFEST)["sha256"]["a.json"] == files.sha256_file(run / "a.json")


def _writer(args):
    folder, worker = args
    for i in range(8):
        files.write_json(folder / f"w{worker}-{i}.json", {"worker": worker, "i": i})
        files.write_json(folder / "shared.json", {"worker": worker, "i": i})


def test_forked_workers_writing_into_one_folder_keep_a_whole_manifest(run):
    folder = run / "finetunes"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(folder, w) for w in range(4)])
    recorded = files.read_json(folder / files.MANIFEST)["sha256"]
    assert set(recorded) == {f"w{w}-{i}.json" for w in range(4) for i in range(8)} | {"shared.json"}
    for name in recorded:
        files.read_json(folder / name)  # every one verifies
    assert not _leftovers(folder)
