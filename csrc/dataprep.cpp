// Placeholder until its issue lands: registers nothing.
#include "bindings.h"

namespace craft {
void bind_dataprep(pybind11::module_&) {}
}  // namespace craft
