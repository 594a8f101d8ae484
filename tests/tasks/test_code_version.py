"""The code version in every stage key: every module under models/, in every subfolder, as a syntax tree."""

import shutil
from pathlib import Path

import models
from tasks.config.identity import code_version, tree_version


def _copy_of_models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(Path(models.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_code_version_is_that_of_the_models_tree():
    assert code_version() == tree_version(Path(models.__file__).parent)


def test_an_edit_in_a_subfolder_changes_it_and_a_comment_or_docstring_does_not(tmp_path):
    root = _copy_of_models(tmp_path)
    deep = root / "room" / "deeper" / "module.py"
    deep.parent.mkdir(parents=True)
    deep.write_text('"""A module two folders down."""\n\nSCALE = 1.0\n')
    before = tree_version(root)

    deep.write_text('"""Its docstring reworded."""\n\n# a comment\nSCALE  =  1.0  # reformatted\n')
    assert tree_version(root) == before

    deep.write_text('"""A module two folders down."""\n\nSCALE = 2.0\n')
    assert tree_version(root) != before


def test_every_existing_module_counts_wherever_it_lives(tmp_path):
    root = _copy_of_models(tmp_path)
    before = tree_version(root)
    for path in sorted(root.rglob("*.py")):
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        original = path.read_text()
        path.write_text(original + "\n_EDITED = True\n")
        assert tree_version(root) != before, path.relative_to(root)
        path.write_text(original)
    assert tree_version(root) == before
