import os
import subprocess
import sys

import craft_kernels
from craft_kernels._backend import BUILD_HINT


def test_backend_info_reports_extension_and_paths():
    info = craft_kernels.backend_info()
    assert info["extension"]["loaded"] is True
    assert "-O3" in info["extension"]["cxx_flags"] and "c++17" in info["extension"]["cxx_flags"]
    assert set(info["cpu"]["bf16"]) == {"amx_bf16", "avx512_bf16", "fast"}
    assert info["cuda"]["available"] is False or info["ops"]["swiglu"] == "triton"
    assert "doc_attention" in info["ops"]


def test_python_m_prints_info():
    out = subprocess.run([sys.executable, "-m", "craft_kernels"], capture_output=True, text=True, check=True).stdout
    assert "loaded: True" in out and "cxx_flags" in out


def _run_without_extension(code, native):
    # a meta-path hook that hides craft_kernels._C, as on a machine where it was never built
    prelude = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'craft_kernels._C': raise ImportError('hidden for the test')\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = dict(os.environ, CRAFT_NATIVE=native)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env)


def test_missing_extension_is_an_import_error_with_instructions():
    r = _run_without_extension("import craft_kernels.native", "cpp")
    assert r.returncode != 0 and "ImportError" in r.stderr and "pip install -e ." in r.stderr
    assert BUILD_HINT.split(".")[0] in r.stderr


def test_missing_extension_is_fine_when_python_forced_and_info_still_works():
    r = _run_without_extension(
        "import craft_kernels.native, craft_kernels; print(craft_kernels.backend_info()['extension']['loaded'])", "python")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_bad_craft_native_value():
    r = subprocess.run([sys.executable, "-c", "import craft_kernels.native"], capture_output=True, text=True,
                       env=dict(os.environ, CRAFT_NATIVE="rust"))
    assert r.returncode != 0 and "CRAFT_NATIVE" in r.stderr
