from craft_kernels._backend import format_backend_info

print(format_backend_info())
