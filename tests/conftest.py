import os
import tempfile

# per-machine dispatch choices go to a fresh cache per test session, never the user's (set before
# craft_kernels is imported: it reads the cache at import)
os.environ.setdefault("CRAFT_CACHE_DIR", tempfile.mkdtemp(prefix="craft-dispatch-"))

import pytest  # noqa: E402
import torch  # noqa: E402

import craft_kernels as ck  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, so no result depends on which tests ran before."""
    torch.manual_seed(0)


@pytest.fixture(params=["cpp", "python"])
def native_impl(request):
    """Runs a native-op test once with the C++ extension and once with the pure-Python reference."""
    with ck.use_native(request.param):
        yield request.param


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (the machine is shared; small runs are faster and deterministic)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_byte_corpus(tmp_path_factory):
    """A small pretokenized corpus (byte tokenizer) of linked markdown documents, built once per session."""
    from craft.data import pretokenize
    from tests._training_helpers import write_corpus

    tmp = tmp_path_factory.mktemp("small_corpus")
    return pretokenize(write_corpus(tmp / "src", repeat=6), tmp / "pre", "byte")
