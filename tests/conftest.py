"""Shared fixtures, the `slow` marker, and one thread for torch."""

import pytest
import torch

from pipeline.cache import write_cache
from tests.helpers import small_splits

# The test models are tiny: a second thread only adds synchronisation, and on a
# busy CI machine OpenMP's waits between threads cost more than the maths.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def xor_cache(tmp_path_factory):
    """A complete cache on disk whose label needs both modalities (see pipeline.synthetic)."""
    folder = tmp_path_factory.mktemp("xor-cache")
    write_cache(folder, small_splits("xor", rows=2000), part_rows=700)
    return folder
