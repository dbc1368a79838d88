"""Atomic writes: a failed write leaves the old file as it was and no temporary file behind."""

import numpy as np
import pytest

from readme_jax import atomic
from readme_jax.evaluate import Routes


def test_write_replaces_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_text(path, "old")
    assert path.read_text() == "old"
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_routes_round_trip_through_an_atomic_save(tmp_path):
    routes = Routes(layer_choice_NT=np.arange(6).reshape(2, 3), oracle_T=np.array([0, 1, 1]),
                    domain_T=np.array([0, 0, 1]), position_T=np.array([0, 1, 2]))
    routes.save(tmp_path / "routes.npz")
    back = Routes.load(tmp_path / "routes.npz")
    assert back.router_T is None
    np.testing.assert_array_equal(back.layer_choice_NT, routes.layer_choice_NT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.npz"]


def test_folder_swap_keeps_the_old_folder_on_failure_and_replaces_it_on_success(tmp_path):
    from readme_jax.profile import ProfileStats

    folder = tmp_path / "stats"
    stats = ProfileStats(mean_abs_DNF=np.ones((2, 1, 4)), tokens_D=np.array([3, 5]), domains=("a", "b"),
                         model="m", d_ff=4, n_layers=1, block_len=8)
    stats.save(folder)
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_folder(folder) as tmp:
        (tmp / "stats.json").write_text("half")
        raise RuntimeError("boom")
    assert ProfileStats.load(folder).tokens_D.tolist() == [3, 5]
    ProfileStats(**{**stats.__dict__, "tokens_D": np.array([7, 9])}).save(folder)
    assert ProfileStats.load(folder).tokens_D.tolist() == [7, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats"]
    assert sorted(p.name for p in folder.iterdir()) == ["stats.json", "stats.npz"]
