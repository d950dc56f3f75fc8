import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: the test machine is small and shared, and several small
    models train at once in some tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
