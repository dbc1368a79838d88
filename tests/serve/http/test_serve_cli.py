"""`readme-jax serve` / `bench-serve` bad input: one `error:` line, exit 2."""

import socket

from readme_jax import cli


def test_a_port_in_use_is_one_error_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot listen on 127.0.0.1:") and str(port) in err[0]


def test_bench_serve_bad_workload_is_one_error_line(capsys):
    assert cli.main(["bench-serve", "--workload", "nothing.txt", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workload" in err[0]


def test_a_bad_model_is_one_error_line(capsys, tmp_path):
    import pytest

    pytest.importorskip("serve.engine")
    assert cli.main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]
