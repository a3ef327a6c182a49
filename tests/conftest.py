import os
import tempfile

# per-machine dispatch choices go to a fresh cache per test session, never the user's (set before
# craft_kernels is imported: it reads the cache at import)
os.environ.setdefault("CRAFT_CACHE_DIR", tempfile.mkdtemp(prefix="craft-dispatch-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from craft_kernels.native import _dispatch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, so no result depends on which tests ran before."""
    torch.manual_seed(0)


@pytest.fixture(params=["cpp", "python"])
def native_impl(request):
    """Runs a native-op test once with the C++ extension and once with the pure-Python reference."""
    with _dispatch.use(request.param):
        yield request.param

