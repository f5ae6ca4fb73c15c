import os
import sys

import pytest
import torch

# Test helpers (io_fixtures, …) live next to the tests.
sys.path.insert(0, os.path.dirname(__file__))

# Two cores on CI: keep torch from oversubscribing them when pytest runs.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
