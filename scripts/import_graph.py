"""Count the runtime imports between `trainer` modules, and those that cross from one package into another.

    python3 scripts/import_graph.py            # the counts
    python3 scripts/import_graph.py --edges    # and every arrow, one per line
    python3 scripts/import_graph.py --check    # exit 1 if an import goes against the layer order below

An arrow is one module importing another (counted once per pair, wherever in the file the import is). Imports under
`if TYPE_CHECKING:` are type hints only and never run, so they are not counted. A module's package is its folder under
`trainer/` (`trainer.storage.gcs` is in `storage`); a module directly in `trainer/` is in its own package. Standard
library only: it reads the source, it imports nothing.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "trainer"

# Lowest first. A module may import from its own layer or any layer below it, never above. The recipes are the top.
LAYERS = [
    {"errors", "files"},
    {"storage"},
    {"layout"},
    {"sampling"},
    {"config"},
    {"tasks"},
    {"data"},
    {"model"},
    {"checkpoints"},
    {"runs"},
    {"training"},
    {"outputs"},
    {"cloud"},
    {"__main__", "train", "evaluate", "check"},
]
SHARED = LAYERS[0] | {"layout"}
RECIPES = LAYERS[-1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]):
    """The trainer modules `tree` imports at run time."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("trainer"):
                    yield _closest(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("trainer"):
                for alias in node.names:
                    # `from trainer.kinds import classification` imports a module; `from trainer.x import f` does not
                    target = f"{base}.{alias.name}"
                    yield target if target in known else _closest(base, known)
        stack.extend(ast.iter_child_nodes(node))


def _closest(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    known = {module_name(f) for f in files}
    edges: dict[str, set[str]] = {}
    for f in files:
        module = module_name(f)
        tree = ast.parse(f.read_text(), str(f))
        targets = set(_imports(tree, module, f.name == "__init__.py", known)) - {module, "trainer"}
        edges[module] = targets
    return edges


def layer_of(package: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if package in layer), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every arrow")
    parser.add_argument("--check", action="store_true", help="fail on an import against the layer order")
    args = parser.parse_args()
    edges = graph()
    arrows = [(a, b) for a, targets in edges.items() for b in sorted(targets)]
    crossing = [(a, b) for a, b in arrows if package_of(a) != package_of(b)]
    upward = [
        (a, b)
        for a, b in crossing
        if None not in (layer_of(package_of(a)), layer_of(package_of(b)))
        and layer_of(package_of(b)) > layer_of(package_of(a))
    ]
    packages = sorted({package_of(m) for m in edges})
    print(f"modules: {len(edges)}  packages: {len(packages)}")
    print(f"runtime imports between modules: {len(arrows)}")
    print(f"crossing from one package into another: {len(crossing)}")
    concerns = [(a, b) for a, b in crossing if package_of(a) not in SHARED | RECIPES and package_of(b) not in SHARED]
    print(f"  of which between two concerns (not from a recipe, not into {', '.join(sorted(SHARED))}): {len(concerns)}")
    print(f"package-to-package arrows: {len({(package_of(a), package_of(b)) for a, b in crossing})}")
    print(f"against the layer order: {len(upward)}")
    if args.edges:
        for a, b in arrows:
            mark = "  UP" if (a, b) in upward else ("  x" if (a, b) in crossing else "")
            print(f"  {a} -> {b}{mark}")
    elif upward:
        for a, b in upward:
            print(f"  {a} -> {b}")
    return 1 if args.check and upward else 0


if __name__ == "__main__":
    sys.exit(main())
