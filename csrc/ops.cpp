// The flaudit._C extension module: the schemas of every torch.ops.flaudit.* op, and a tiny
// pybind module so that `import flaudit._C` loads (and thereby registers) the kernels.
//
// Kernels register per device in their own files (TORCH_LIBRARY_IMPL(flaudit, CPU|CUDA, m));
// the schemas live here, in the one TORCH_LIBRARY block a library may have.
#include <torch/extension.h>
#include <torch/library.h>

bool cuda_built() {
#ifdef FLAUDIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(flaudit, m) {
  // X[r,k] = (gW[r,k] - gW[r,k+1]) / (gb[r,k] - gb[r,k+1]) where valid, 0 elsewhere;
  // valid[r,k] = |gb[r,k] - gb[r,k+1]| > eps.  csrc/bin_solve.cpp, csrc/bin_solve.cu.
  m.def("bin_solve(Tensor gW, Tensor gb, float eps) -> (Tensor X, Tensor valid)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("cuda_built", &cuda_built); }
