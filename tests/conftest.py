import os

import pytest
import torch

# Two cores: keep intra-op threads fixed so the suite's run time is predictable.
torch.set_num_threads(int(os.environ.get('MOBILEONE_DENSE_TEST_THREADS', '2')))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT
