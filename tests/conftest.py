import pytest
import torch

from craft_kernels.native import _dispatch


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, so no result depends on which tests ran before."""
    torch.manual_seed(0)


@pytest.fixture(params=["cpp", "python"])
def native_impl(request):
    """Runs a native-op test once with the C++ extension and once with the pure-Python reference."""
    with _dispatch.use(request.param):
        yield request.param
