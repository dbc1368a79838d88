"""The serving core is pure Python: importing any serve module must not import jax (or matplotlib)."""

import pkgutil
import subprocess
import sys

import serve


def test_no_serve_module_imports_jax():
    names = sorted(f"serve.{m.name}" for m in pkgutil.iter_modules(serve.__path__))
    assert "serve.scheduler" in names and "serve.cli" in names
    program = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'matplotlib'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"serve modules imported: {out.stdout.strip()}"
