// The module craft_kernels._C: build facts plus every algorithm's bindings.
#include "bindings.h"

#ifndef CRAFT_CXX_FLAGS
#define CRAFT_CXX_FLAGS "unknown"
#endif

PYBIND11_MODULE(_C, m) {
    m.doc() = "craft native ops (plain C++17, NumPy in and out, GIL released)";
    m.def("build_info", []() {
        pybind11::dict d;
        d["cxx_flags"] = CRAFT_CXX_FLAGS;
#if defined(__clang__)
        d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        d["compiler"] = std::string("gcc ") + __VERSION__;
#else
        d["compiler"] = "unknown";
#endif
        d["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
                        std::to_string(PYBIND11_VERSION_PATCH);
        return d;
    });
    craft::bind_dataprep(m);
    craft::bind_link_detector(m);
    craft::bind_trie(m);
    craft::bind_act_scan(m);
    craft::bind_span_attention(m);
    craft::bind_swiglu(m);
}
