// Each algorithm's .cpp file defines one bind_* function that adds its ops to the module.
#pragma once
#include <pybind11/pybind11.h>

namespace craft {
void bind_dataprep(pybind11::module_& m);  // dataprep.cpp: pad_units, greedy_join, join_pad, flatten_level, build_dvt
void bind_link_detector(pybind11::module_& m);  // link_detector.cpp
void bind_trie(pybind11::module_& m);  // trie.cpp
void bind_act_scan(pybind11::module_& m);  // act_scan.cpp: the scalar scan of act_accumulate
void bind_span_attention(pybind11::module_& m);  // span_attention.cpp: causal attention in document spans (CPU)
}  // namespace craft
