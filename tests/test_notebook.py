"""notebooks/walkthrough.ipynb: committed without outputs, and executed top to bottom by a real Jupyter kernel
(marker ``notebook``; deselect with ``-m "not notebook"``).

The kernel is the python running pytest (the project's venv), started in the repository root with the root on
PYTHONPATH, so it imports this checkout; it runs offline on a single CPU device (the suite's 8 fake devices are
for the sharding tests). The notebook is executed from a temporary copy and never written back, so outputs never
land in the repository; its work folder (two MoE folders and a checkpoint, about 2 GB) is deleted afterwards.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from readme_jax.assets import default_gguf_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
CELL_TIMEOUT_S = 900  # per cell; the whole notebook takes minutes (README "Notebook")


def kernel_env(**extra) -> dict:
    env = dict(os.environ)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env[var] = "1"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def execute(nb, env: dict):
    """Run every cell of ``nb`` in place in a fresh kernel (cwd: the repository root)."""
    import nbclient

    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)
    return nb


def read_copy(folder: Path):
    """The notebook, read from a temporary copy (Jupyter packages missing: skip, naming the extra)."""
    for package in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(package, reason=f"{package} not installed (the `test` extra has it)")
    import nbformat

    copy = folder / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    return nbformat.read(copy, as_version=4)


def stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_committed_notebook_has_no_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and any(c["cell_type"] == "code" for c in nb["cells"])
    for i, cell in enumerate(nb["cells"]):
        assert "execution" not in cell.get("metadata", {}), f"cell {i} carries execution timestamps"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"cell {i} has outputs: clear them before committing (Jupyter: Edit > Clear Outputs of All Cells)"


@pytest.mark.notebook
def test_first_cell_says_run_make_setup_without_the_model(tmp_path):
    nb = read_copy(tmp_path)
    from nbclient.exceptions import CellExecutionError

    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells = nb.cells[:first + 1]

    with pytest.raises(CellExecutionError) as caught:
        execute(nb, kernel_env(READMEJAX_CACHE=str(tmp_path / "empty-cache")))
    assert caught.value.ename == "ReadmeJaxError"
    assert "run `make setup`" in caught.value.evalue and "default model is not in the cache" in caught.value.evalue


@pytest.mark.notebook
@pytest.mark.realmodel
@pytest.mark.skipif(not default_gguf_path().is_file(), reason="default model not fetched (make setup)")
def test_walkthrough_runs_top_to_bottom(tmp_path):
    nb = read_copy(tmp_path)
    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory(prefix="readme-jax-notebook-") as work:
        try:
            execute(nb, kernel_env(READMEJAX_NOTEBOOK_WORKDIR=work))
        except CellExecutionError as exc:
            pytest.fail(f"a notebook cell failed:\n{exc}", pytrace=False)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert f"readme_jax from {ROOT / 'readme_jax'}\n" in stdout_of(code[0])  # this checkout, not another install
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the experts' sizes and overlap; hit ratio against capacity
    assert "notebook ran in" in stdout_of(code[-1])
