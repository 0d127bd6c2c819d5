// VeLO's tensor-level network for the fused path (velo_tensor_level.cpp); per_param_mlp.cpp's module
// calls this to add it to the extension.
#pragma once

#include <torch/extension.h>

void bind_velo_tensor_level(pybind11::module& module);
