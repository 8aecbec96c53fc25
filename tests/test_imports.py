"""No module uses another module's private (``_``-prefixed) names, and the product never imports the dev kit.

A leading underscore says "may change without notice": a caller elsewhere that reaches for it ties two
modules together where nobody sees it (fuzz once called ``preprocess.dataset``'s private readers; a rename
there would have broken the fuzzer silently). What several places need is made public where it lives.

Only project modules are checked. Third-party private names are outside this rule: ``cogrun/schema.py``
uses ``cog._inspector``/``cog._adt`` on purpose, to read the inputs exactly as Cog's own static parser does.
The whole check is a parse (ast) of every project file: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"sdxl", "training", "preprocess", "weights", "cogrun", "fuzz", "bench", "scripts"}
PROJECT_MODULES = {"predict", "predict_turbo", "train"}
DEV_KIT = {"devkit"}  # development support: tests/, bench/ and fuzz/ use it, the product never does
DEV_FOLDERS = ("tests/", "bench/", "fuzz/", "devkit/", "scripts/")

# Exceptions: none. Entries are (file or folder/, the name it uses); keep these empty.
ALLOWED_PRIVATE: set[tuple[str, str]] = set()
ALLOWED_DEV_KIT_IMPORTS: set[tuple[str, str]] = set()


def allowed(found: set[tuple[str, str]], allow: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The uses in ``found`` that no entry of ``allow`` covers."""
    return {(rel, name) for rel, name in found
            if not any(name == n and (rel == p or p.endswith("/") and rel.startswith(p)) for p, n in allow)}


def project_files() -> list[Path]:
    skip = {".venv", ".tiny", "weights-cache", ".git", "node_modules"}
    return sorted(p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts))


def module_name(path: Path) -> str:
    """The dotted name a file is imported as (devkit/x.py -> devkit.x; tests/a/b.py -> tests.a.b)."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_project(dotted: str) -> bool:
    root = dotted.split(".")[0]
    return root in PROJECT_PACKAGES | PROJECT_MODULES | DEV_KIT


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve(module: str | None, level: int, here: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def owner(dotted: str) -> str:
    """The module that defines a private name: everything before the first private part."""
    parts = dotted.split(".")
    first = next(i for i, p in enumerate(parts) if is_private(p))
    return ".".join(parts[:first])


def uses(path: Path, text: str | None = None) -> tuple[set[str], set[str]]:
    """(private project names this file reaches in other modules, test-helper modules it imports)."""
    here = module_name(path)
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    bound: dict[str, str] = {}  # local name -> the project module (or name) it stands for
    private, helpers = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_project(alias.name):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                    private |= {alias.name} if any(is_private(p) for p in alias.name.split(".")) else set()
                    helpers |= {alias.name} if alias.name.split(".")[0] in DEV_KIT else set()
        elif isinstance(node, ast.ImportFrom):
            source = resolve(node.module, node.level, here, path.name == "__init__.py")
            if not is_project(source):
                continue
            if source.split(".")[0] in DEV_KIT:
                helpers.add(source)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                bound[alias.asname or alias.name] = full
                if any(is_private(p) for p in full.split(".")):
                    private.add(full)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                private.add(".".join([bound[value.id], *chain]))
    return {name for name in private if owner(name) != here}, helpers


def test_no_module_uses_another_modules_private_names():
    found = set()
    for path in project_files():
        rel = path.relative_to(REPO).as_posix()
        found |= {(rel, name) for name in uses(path)[0]}
    assert allowed(found, ALLOWED_PRIVATE) == set(), "make these public where they are defined"


def test_the_product_never_imports_the_dev_kit():
    found = set()
    for path in project_files():
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(DEV_FOLDERS):
            found |= {(rel, name) for name in uses(path)[1]}
    assert allowed(found, ALLOWED_DEV_KIT_IMPORTS) == set(), "the product must not depend on development support"


def test_the_check_sees_private_uses():
    """The parser catches every spelling, or the tests above could never fail."""
    probe = REPO / "fuzz" / "probe.py"  # never written: the text is passed in
    text = (
        "from preprocess.dataset import _a\n"
        "from preprocess import dataset\n"
        "import weights.cache as cache_mod\n"
        "import devkit.media\n"
        "dataset._b\n"
        "cache_mod._c()\n"
        "from . import _d\n"
        "from ._e import f\n"
        "self._own, _local._x\n"
    )
    private, helpers = uses(probe, text)
    assert private == {"preprocess.dataset._a", "preprocess.dataset._b", "weights.cache._c", "fuzz._d", "fuzz._e.f"}
    assert helpers == {"devkit.media"}
