"""The serving core and the simulator are pure Python: importing any of their modules imports no jax (or
matplotlib, which the plots import lazily)."""

import pkgutil
import subprocess
import sys

import serve.core
import serve.sim


def _modules(package) -> list[str]:
    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.walk_packages(package.__path__))


def test_no_core_or_sim_module_imports_jax():
    names = ["serve", "serve.core", "serve.sim"] + _modules(serve.core) + _modules(serve.sim)
    assert "serve.core.scheduler" in names and "serve.sim.cli" in names and "serve.sim.simulate" in names
    program = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'matplotlib'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"serve.core / serve.sim modules imported: {out.stdout.strip()}"
