"""One-way layers: every import edge of the project's packages runs down, never up or across.

    commands (readme_jax.cli + each package's cli modules, found through entry points)   top
    serve.http -> serve.engine -> serve.core          serve.routing -> serve.sim -> serve.core
    train                                              serve
    readme_jax
    kernels                                                                              bottom

Every import statement is read with ``ast``, function-local ones included, so a lazy import cannot hide an
edge. ``serve.core`` and ``serve.sim`` must stay importable without jax: from ``readme_jax`` they may take only
the error class and the atomic file writes (``readme_jax.errors``, ``readme_jax.atomic``: both jax-free).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "readme_jax", "train", "serve")

# What each layer may import from the project (itself included). A key is a module prefix; the longest one
# that matches a module decides.
ALLOWED = {
    "kernels": ("kernels",),
    "readme_jax": ("readme_jax", "kernels"),
    "train": ("train", "readme_jax", "kernels"),
    "serve": ("serve", "readme_jax", "kernels"),
    "serve.core": ("serve.core", "readme_jax.errors", "kernels.errors"),
    "serve.sim": ("serve.sim", "serve.core", "readme_jax.errors", "readme_jax.atomic", "kernels.errors"),
    "serve.routing": ("serve.routing", "serve.sim", "serve.core", "readme_jax", "kernels"),
    "serve.engine": ("serve.engine", "serve.sim", "serve.core", "readme_jax", "kernels"),
    "serve.http": ("serve.http", "serve.engine", "serve.sim", "serve.core", "readme_jax", "kernels"),
}
# Explicit, documented exceptions (importer, imported). None so far.
SEAMS: set[tuple[str, str]] = set()


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


MODULES = project_modules()


def imported_modules(name: str, path: pathlib.Path):
    """(line, imported module) for every import statement of the module that names a project module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield node.lineno, target


def _rule(name: str) -> tuple[str, ...]:
    key = max((k for k in ALLOWED if name == k or name.startswith(k + ".")), key=len)
    return ALLOWED[key]


def _allowed(importer: str, target: str) -> bool:
    if (importer, target) in SEAMS:
        return True
    if importer in ("serve", "serve.cli"):  # the package's command registry sits above its rooms
        return target.split(".")[0] in ALLOWED["serve"]
    return any(target == a or target.startswith(a + ".") for a in _rule(importer))


def test_every_module_is_found():
    for name in ("kernels.gmm.api", "readme_jax.cli", "train.cli", "serve.core.scheduler", "serve.sim.simulate",
                 "serve.routing.tracegen"):
        assert name in MODULES


def test_no_upward_or_cross_edges():
    bad = []
    for name, path in sorted(MODULES.items()):
        for line, target in imported_modules(name, path):
            if not _allowed(name, target):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target}")
    assert not bad, "imports that run up or across the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("importer,target,ok", [
    ("readme_jax.moe", "kernels.gmm", True),
    ("readme_jax.moe", "train.steps", False),
    ("kernels.gmm.checks", "readme_jax.errors", False),
    ("train.loop", "serve.core.types", False),
    ("serve.core.types", "readme_jax.errors", True),
    ("serve.core.metrics", "serve.sim.simulate", False),
    ("serve.sim.simulate", "readme_jax.lm", False),
    ("serve.sim.trace", "readme_jax.atomic", True),
    ("serve.engine.core", "serve.http.app", False),
])
def test_the_rule_itself(importer, target, ok):
    assert _allowed(importer, target) is ok


def test_function_local_and_relative_imports_are_seen(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import numpy\n\ndef f():\n    from train.run import train\n    from . import metrics\n"
                    "    from ..sim import simulate\n")
    edges = [target for _, target in imported_modules("serve.core.probe", path)]
    assert edges == ["train.run", "serve.core.metrics", "serve.sim.simulate"]
    assert [_allowed("serve.core.probe", t) for t in edges] == [False, True, False]
