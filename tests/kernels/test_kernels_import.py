"""`kernels` must be this repository's folder, not the unrelated PyPI package of the same name."""

import os

import kernels

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_kernels_is_this_repo():
    assert kernels.__file__ and os.path.abspath(kernels.__file__).startswith(os.path.join(REPO, "kernels") + os.sep)
