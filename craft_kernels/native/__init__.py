"""Native ops: thin wrappers over craft_kernels._C, each beside its pure-Python reference.

Importing this package checks that the extension is there unless CRAFT_NATIVE=python, so a
missing build is an ImportError that says how to build it, never a silent fallback.
"""
from craft_kernels._backend import extension, native_mode

if native_mode() != "python":
    extension()
