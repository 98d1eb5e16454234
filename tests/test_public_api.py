"""The public API: ``import caft_tl`` is light, every public name resolves to the object its module
defines, and every public function and class says how to call it (Args / Returns / Example)."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import caft_tl

INIT = Path(caft_tl.__file__)
NAMES = [n for n in caft_tl.__all__ if n != "__version__"]


def test_import_caft_tl_imports_neither_torch_nor_transformer_lens():
    code = "import sys, caft_tl; print(sorted({'torch', 'transformer_lens'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", NAMES)
def test_every_public_name_is_its_modules_object(name):
    module, attr = caft_tl._PUBLIC[name]
    assert getattr(caft_tl, name) is getattr(__import__(module, fromlist=[attr]), attr)


def test_public_names_are_defined_once_and_listed_in_all():
    tree = ast.parse(INIT.read_text())
    table = next(n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and n.target.id == "_PUBLIC")
    keys = [k.value for k in table.keys]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert caft_tl.__all__ == ["__version__", *keys]
    assert set(NAMES) <= set(dir(caft_tl))


def test_an_unknown_name_is_a_one_line_error_listing_the_public_ones():
    with pytest.raises(AttributeError, match=r"no attribute 'Subspce'; public: Subspace, ") as e:
        caft_tl.Subspce  # noqa: B018
    assert "\n" not in str(e.value)


def test_the_api_covers_what_the_readme_promises():
    promised = {
        "Subspace",
        "Intervention",
        "MODES",
        "register_mode",
        "collect_diff_stats",
        "pca",
        "finetune",
        "add_lora",
        "load_chat_jsonl",
        "load_mc_jsonl",
        "load_model",
        "mode_grid",
        "mean_projection",
    }
    assert promised <= set(NAMES)
    assert inspect.isgeneratorfunction(inspect.unwrap(caft_tl.Intervention.apply))  # the context manager


@pytest.mark.parametrize("name", [n for n in NAMES if callable(getattr(caft_tl, n))])
def test_every_public_function_and_class_documents_its_arguments_and_an_example(name):
    obj = getattr(caft_tl, name)
    doc = inspect.getdoc(obj) or ""
    sections = ["Example:"] + (["Args:", "Returns:"] if inspect.isfunction(obj) else [])
    missing = [s for s in sections if s not in doc]
    assert not missing, f"caft_tl.{name}'s docstring lacks {missing}"
    if inspect.isfunction(obj):  # every argument is named under Args
        args = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        block = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
        unnamed = [a for a in args if a not in block]
        assert not unnamed, f"caft_tl.{name}'s Args do not name {unnamed}"
