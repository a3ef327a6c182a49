// Each algorithm's .cpp file defines one bind_* function that adds its ops to the module.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace craft {
void bind_dataprep(pybind11::module_& m);  // dataprep.cpp: pad_units, greedy_join, join_pad, flatten_level, build_dvt
void bind_link_detector(pybind11::module_& m);  // link_detector.cpp
void bind_trie(pybind11::module_& m);  // trie.cpp
void bind_act_scan(pybind11::module_& m);  // act_scan.cpp: the scalar scan of act_accumulate
void bind_span_attention(pybind11::module_& m);  // span_attention.cpp: causal attention in document spans (CPU)
void bind_swiglu(pybind11::module_& m);  // swiglu.cpp: SwiGLU forward and backward (CPU)

// The vector ISA of the native kernels here: 0 portable, 1 AVX2, 2 AVX-512 (the CPU's best, or
// CRAFT_SPAN_ISA=default|avx2|avx512; raises ValueError for another value or one the CPU lacks).
int native_isa();

// `o` as a 1-d C-contiguous aligned native-order int64 NumPy array (exactly np.ndarray), read from the
// leading fields of NumPy's PyArrayObject (the same in NumPy 1 and 2) without any NumPy call: the
// per-call fast path of the native ops. False for anything else (the caller takes its general path).
struct NdArrayHead {
    PyObject_HEAD
    char* data;
    int nd;
    Py_intptr_t* dims;
    Py_intptr_t* strides;
};
inline bool int64_row(PyObject* o, const int64_t*& p, int64_t& n) {
    namespace d = pybind11::detail;
    if (Py_TYPE(o) != d::npy_api::get().PyArray_Type_) return false;
    auto* a = reinterpret_cast<NdArrayHead*>(o);
    if (a->nd != 1 || (a->dims[0] > 1 && a->strides[0] != 8)) return false;
    auto* t = reinterpret_cast<d::PyArrayDescr_Proxy*>(d::array_proxy(o)->descr);
    if (!((t->type_num == d::npy_api::NPY_LONG_ && sizeof(long) == 8) || t->type_num == d::npy_api::NPY_LONGLONG_) ||
        t->byteorder == '>' || reinterpret_cast<uintptr_t>(a->data) % alignof(int64_t))
        return false;
    p = reinterpret_cast<const int64_t*>(a->data);
    n = a->dims[0];
    return true;
}
}  // namespace craft
