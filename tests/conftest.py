import pytest

from craft_kernels.native import _dispatch


@pytest.fixture(params=["cpp", "python"])
def native_impl(request):
    """Runs a native-op test once with the C++ extension and once with the pure-Python reference."""
    with _dispatch.use(request.param):
        yield request.param
