"""The package layout (issue 19): a handful of modules at the top of trainer/, one sub-package per concern with a
docstring, imports only down the layer order (scripts/import_graph.py), and the recipe train.py imported by nobody
but the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys

from .tiny import ROOT

TRAINER = ROOT / "trainer"


def test_the_top_of_trainer_holds_at_most_eight_modules_and_every_package_says_what_lives_there():
    top = sorted(p.name for p in TRAINER.glob("*.py"))
    assert len(top) <= 8, top
    packages = [p for p in TRAINER.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    assert len(packages) >= 10
    for package in packages:
        init = package / "__init__.py"
        assert init.is_file(), package
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_imports_follow_the_layer_order():
    result = subprocess.run([sys.executable, "scripts/import_graph.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "against the layer order: 0" in result.stdout


def test_only_the_cli_imports_the_training_recipe():
    importers = []
    for path in TRAINER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module == "trainer":
                names += [f"trainer.{a.name}" for a in node.names]
            if "trainer.train" in names:
                importers.append(str(path.relative_to(ROOT)))
    assert importers == ["trainer/__main__.py"]


def test_the_makefiles_settings_reader_needs_only_the_standard_library(tmp_path):
    """make runs `python3 -m trainer.config.env` before .venv exists: -S -E leaves out site-packages."""
    (tmp_path / "x.env").write_text("PROJECT_ID=my-project\n")
    result = subprocess.run([sys.executable, "-S", "-E", "-m", "trainer.config.env", "get", "PROJECT_ID"],
                            cwd=ROOT, capture_output=True, text=True, env={"ENV_FILE": str(tmp_path / "x.env")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "my-project\n"
