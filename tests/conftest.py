import pytest
import torch

import craft_kernels as ck


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, so no result depends on which tests ran before."""
    torch.manual_seed(0)


@pytest.fixture(params=["cpp", "python"])
def native_impl(request):
    """Runs a native-op test once with the C++ extension and once with the pure-Python reference."""
    with ck.use_native(request.param):
        yield request.param
