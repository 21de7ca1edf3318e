"""Suite-wide settings.

One intra-op thread per test process: on a 2-core machine shared with other
work, torch's default thread pool makes the tiny models of the tests many
times slower (measured: a training fixture took 87 s with the default, 6 s
with one thread).  Tests that measure threading set it themselves.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
