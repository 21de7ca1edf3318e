"""`eftclip.threads.torch_threads`: the one helper that sets torch's thread count for a block and restores it."""

import pytest
import torch

from eftclip.threads import torch_threads


def test_threads_set_for_the_block_and_restored_even_on_error():
    torch.set_num_threads(2)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    for leave_alone in (None, 0):  # no setting: torch's own count is kept
        with torch_threads(leave_alone):
            assert torch.get_num_threads() == 2
