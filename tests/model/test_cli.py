"""The CLI: one clear error line and a non-zero exit for bad input; text for good input."""

import subprocess
import sys

import pytest
from flax import nnx

from readme_jax import weights
from readme_jax.cli import main
from readme_jax.hf_import import save_hf
from readme_jax.lm import jax_to_numpy
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    return save_hf(tmp_path_factory.mktemp("cli") / "tiny", cfg, weights.pure_to_hf(cfg, pure),
                   tokenizer=tiny_tokenizer())


def test_missing_model_is_one_error_line():
    result = subprocess.run([sys.executable, "-m", "readme_jax.cli", "generate", "--model", "/no/such/dir",
                             "--prompt", "hi"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: /no/such/dir: no such file or folder")


def test_generate_and_over_long_prompt(folder, capsys):
    assert main(["generate", "--model", str(folder), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "--model", str(folder), "--prompt", "x" * 100, "--max-new-tokens", "100"]) == 2
    assert "exceeds the model context of 128 tokens" in capsys.readouterr().err
    assert main(["generate", "--model", str(folder), "--prompt", "hi", "--chat", "--max-new-tokens", "2"]) == 0
