"""Builds the C++ extension craft_kernels._C; everything else lives in pyproject.toml."""
import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# Compile the translation units in parallel (NPY_NUM_BUILD_JOBS overrides the job count).
ParallelCompile("NPY_NUM_BUILD_JOBS", default=os.cpu_count() or 1).install()

CXX_FLAGS = ["-O3", "-fvisibility=hidden"]

ext = Pybind11Extension(
    "craft_kernels._C",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=CXX_FLAGS,
    define_macros=[("CRAFT_CXX_FLAGS", '"' + " ".join(["-std=c++17"] + CXX_FLAGS) + '"')],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
