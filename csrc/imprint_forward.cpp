// imprint_forward / imprint_backward, CPU kernels: the binned imprint layer of Robbing the Fed.
//
// A crafted imprint layer has K rows that share Q query vectors (usually Q = 1): bin k uses
// query g(k) = k / (K / Q) and its row is scale[k] * query[g(k)]. So instead of the dense
// O(B*K*D) matmul, each sample's Q query values h[i, q] = <x_i, query_q> are computed once and
//     pre[i, k] = scale[k] * h[i, g(k)] + bias[k],   out[i, k] = act(pre[i, k])
// follow in O(B*(Q*D + K)). act is 0: identity, 1: ReLU (cumulative bins), 2: hardtanh to
// [0, 1] (sparse bins: a ramp across one interval). The backward gives the gradients of the
// dense layer act(x @ (scale * query[g])^T + bias) with respect to x, query, scale and bias,
// again in O(B*(Q*D + K)), plus grad_pre = d loss / d pre, from which the Python wrapper forms
// the dense weight gradient grad_pre^T @ x when a caller trains the rows themselves.
// Derivatives at the kinks follow torch: ReLU passes where pre > 0, hardtanh where 0 < pre < 1.
//
// The schemas are registered here (TORCH_LIBRARY_FRAGMENT); the CUDA kernels live in
// imprint_forward.cu and share check_imprint_inputs below.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>

namespace flaudit {

// Shared by the CPU, CUDA and Meta kernels so every path rejects bad input with one message.
void check_imprint_inputs(const char* op, const at::Tensor& x, const at::Tensor& query,
                          const at::Tensor& scale, const at::Tensor& bias, int64_t activation) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be a 2-D tensor [B, D], got ", x.dim(),
                    "-D tensor of shape ", x.sizes());
  TORCH_CHECK_VALUE(query.dim() == 2, op, ": query must be a 2-D tensor [Q, D], got ",
                    query.dim(), "-D tensor of shape ", query.sizes());
  TORCH_CHECK_VALUE(scale.dim() == 1, op, ": scale must be a 1-D tensor [K], got ", scale.dim(),
                    "-D tensor of shape ", scale.sizes());
  TORCH_CHECK_VALUE(bias.dim() == 1, op, ": bias must be a 1-D tensor [K], got ", bias.dim(),
                    "-D tensor of shape ", bias.sizes());
  const std::array<std::pair<const char*, const at::Tensor*>, 4> named = {
      {{"x", &x}, {"query", &query}, {"scale", &scale}, {"bias", &bias}}};
  for (const auto& [name, t] : named) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                     t->scalar_type());
  }
  TORCH_CHECK_VALUE(query.size(1) == x.size(1), op,
                    ": query and x must have the same D (dim 1), got query.shape=",
                    query.sizes(), " and x.shape=", x.sizes());
  TORCH_CHECK_VALUE(query.size(0) >= 1, op, ": query must hold at least one vector, got Q=0");
  TORCH_CHECK_VALUE(bias.size(0) == scale.size(0), op,
                    ": scale and bias must have the same K, got scale.shape=", scale.sizes(),
                    " and bias.shape=", bias.sizes());
  TORCH_CHECK_VALUE(scale.size(0) % query.size(0) == 0, op, ": K (", scale.size(0),
                    ") must be a multiple of the number of queries Q (", query.size(0), ")");
  for (const auto& [name, t] : named) {
    TORCH_CHECK_VALUE(t->is_contiguous(), op, ": ", name, " must be contiguous, got strides ",
                      t->strides(), " for shape ", t->sizes());
  }
  for (const auto& [name, t] : named) {
    TORCH_CHECK_VALUE(t->device() == x.device(), op,
                      ": all inputs must be on the same device, got x on ", x.device(), " and ",
                      name, " on ", t->device());
  }
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 2, op,
                    ": activation must be 0 (identity), 1 (relu) or 2 (hardtanh), got ",
                    activation);
}

// The extra inputs of the backward: grad_out [B, K] and the saved query values h [B, Q].
void check_imprint_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& query, const at::Tensor& scale,
                                   const at::Tensor& bias, const at::Tensor& h,
                                   int64_t activation) {
  constexpr const char* op = "imprint_backward";
  check_imprint_inputs(op, x, query, scale, bias, activation);
  const std::array<std::pair<const char*, const at::Tensor*>, 2> named = {
      {{"grad_out", &grad_out}, {"h", &h}}};
  const std::array<int64_t, 2> cols = {scale.size(0), query.size(0)};
  for (size_t j = 0; j < named.size(); ++j) {
    const auto& [name, t] = named[j];
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == cols[j], op,
                      ": ", name, " must have shape [", x.size(0), ", ", cols[j], "], got ",
                      t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->is_contiguous(), op, ": ", name, " must be contiguous");
    TORCH_CHECK_VALUE(t->device() == x.device(), op,
                      ": all inputs must be on the same device, got x on ", x.device(), " and ",
                      name, " on ", t->device());
  }
}

namespace {

// Multiply-adds per parallel_for task (~0.3 ms): handing a smaller task to another thread
// costs more than it saves, and on a loaded machine waking a thread can take a scheduler tick.
constexpr int64_t kGrainWork = int64_t{1} << 20;

inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(work_per_item, 1));
}

inline float activate(float pre, int64_t activation) {
  if (activation == 1) return pre > 0.0f ? pre : 0.0f;
  if (activation == 2) return std::min(std::max(pre, 0.0f), 1.0f);
  return pre;
}

inline bool passes(float pre, int64_t activation) {
  if (activation == 1) return pre > 0.0f;
  if (activation == 2) return pre > 0.0f && pre < 1.0f;
  return true;
}

// <a, b> with eight independent partial sums: vectorizable without -ffast-math, and more
// accurate than one running sum.
inline float dot(const float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[d + j] * b[d + j];
  }
  for (; d < n; ++d) acc[d & 7] += a[d] * b[d];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

std::tuple<at::Tensor, at::Tensor> imprint_forward_cpu(const at::Tensor& x,
                                                       const at::Tensor& query,
                                                       const at::Tensor& scale,
                                                       const at::Tensor& bias,
                                                       int64_t activation) {
  check_imprint_inputs("imprint_forward", x, query, scale, bias, activation);
  const int64_t B = x.size(0), D = x.size(1), Q = query.size(0), K = scale.size(0);
  const int64_t G = K / Q;
  at::Tensor out = at::empty({B, K}, x.options());
  at::Tensor h = at::empty({B, Q}, x.options());
  const float* X = x.const_data_ptr<float>();
  const float* W = query.const_data_ptr<float>();
  const float* S = scale.const_data_ptr<float>();
  const float* C = bias.const_data_ptr<float>();
  float* O = out.mutable_data_ptr<float>();
  float* H = h.mutable_data_ptr<float>();
  at::parallel_for(0, B, grain(Q * D + K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* hi = H + i * Q;
      for (int64_t q = 0; q < Q; ++q) hi[q] = dot(X + i * D, W + q * D, D);
      float* oi = O + i * K;
      for (int64_t k = 0; k < K; ++k) oi[k] = activate(S[k] * hi[k / G] + C[k], activation);
    }
  });
  return {out, h};
}

// output_mask: which of grad_x, grad_query, grad_scale, grad_bias the caller needs (the others
// come back empty); grad_pre [B, K] always comes back.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> imprint_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& query,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& h, int64_t activation,
    std::array<bool, 4> output_mask) {
  check_imprint_backward_inputs(grad_out, x, query, scale, bias, h, activation);
  const int64_t B = x.size(0), D = x.size(1), Q = query.size(0), K = scale.size(0);
  const int64_t G = K / Q;
  const float* GO = grad_out.const_data_ptr<float>();
  const float* X = x.const_data_ptr<float>();
  const float* W = query.const_data_ptr<float>();
  const float* S = scale.const_data_ptr<float>();
  const float* C = bias.const_data_ptr<float>();
  const float* H = h.const_data_ptr<float>();

  // grad_pre and, per sample, grad_h[i, q] = sum over the bins of query q of grad_pre * scale.
  at::Tensor grad_pre = at::empty({B, K}, x.options());
  at::Tensor grad_h = at::empty({B, Q}, x.options());
  float* GP = grad_pre.mutable_data_ptr<float>();
  float* GH = grad_h.mutable_data_ptr<float>();
  at::parallel_for(0, B, grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t q = 0; q < Q; ++q) {
        const float hq = H[i * Q + q];
        float acc = 0.0f;
        for (int64_t k = q * G; k < (q + 1) * G; ++k) {
          const float pre = S[k] * hq + C[k];
          const float g = passes(pre, activation) ? GO[i * K + k] : 0.0f;
          GP[i * K + k] = g;
          acc += g * S[k];
        }
        GH[i * Q + q] = acc;
      }
    }
  });

  at::Tensor grad_x, grad_query, grad_scale, grad_bias;
  if (output_mask[2] || output_mask[3]) {  // column sums over the batch, K bins in chunks
    grad_scale = at::empty({K}, x.options());
    grad_bias = at::empty({K}, x.options());
    float* GS = grad_scale.mutable_data_ptr<float>();
    float* GB = grad_bias.mutable_data_ptr<float>();
    at::parallel_for(0, K, grain(B), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        GS[k] = 0.0f;
        GB[k] = 0.0f;
      }
      for (int64_t i = 0; i < B; ++i) {
        const float* gp = GP + i * K;
        const float* hi = H + i * Q;
        for (int64_t k = begin; k < end; ++k) {
          GS[k] += gp[k] * hi[k / G];
          GB[k] += gp[k];
        }
      }
    });
    if (!output_mask[2]) grad_scale = at::Tensor();
    if (!output_mask[3]) grad_bias = at::Tensor();
  }
  if (output_mask[0]) {  // grad_x[i] = sum_q grad_h[i, q] * query[q]
    grad_x = at::empty({B, D}, x.options());
    float* GX = grad_x.mutable_data_ptr<float>();
    at::parallel_for(0, B, grain(Q * D), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float* gx = GX + i * D;
        std::fill(gx, gx + D, 0.0f);
        for (int64_t q = 0; q < Q; ++q) {
          const float g = GH[i * Q + q];
          const float* w = W + q * D;
          for (int64_t d = 0; d < D; ++d) gx[d] += g * w[d];
        }
      }
    });
  }
  if (output_mask[1]) {  // grad_query[q] = sum_i grad_h[i, q] * x[i], D in chunks
    grad_query = at::zeros({Q, D}, x.options());
    float* GW = grad_query.mutable_data_ptr<float>();
    at::parallel_for(0, D, grain(B * Q), [&](int64_t begin, int64_t end) {
      for (int64_t q = 0; q < Q; ++q) {
        float* gw = GW + q * D;
        for (int64_t i = 0; i < B; ++i) {
          const float g = GH[i * Q + q];
          const float* xi = X + i * D;
          for (int64_t d = begin; d < end; ++d) gw[d] += g * xi[d];
        }
      }
    });
  }
  return {grad_x, grad_query, grad_scale, grad_bias, grad_pre};
}

// Shapes only (meta tensors: FakeTensor / torch.compile tracing).
std::tuple<at::Tensor, at::Tensor> imprint_forward_meta(const at::Tensor& x,
                                                        const at::Tensor& query,
                                                        const at::Tensor& scale,
                                                        const at::Tensor& bias,
                                                        int64_t activation) {
  check_imprint_inputs("imprint_forward", x, query, scale, bias, activation);
  return {at::empty({x.size(0), scale.size(0)}, x.options()),
          at::empty({x.size(0), query.size(0)}, x.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> imprint_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& query,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& h, int64_t activation,
    std::array<bool, 4> output_mask) {
  check_imprint_backward_inputs(grad_out, x, query, scale, bias, h, activation);
  auto maybe = [&](bool wanted, at::IntArrayRef shape) {
    return wanted ? at::empty(shape, x.options()) : at::Tensor();
  };
  return {maybe(output_mask[0], x.sizes()), maybe(output_mask[1], query.sizes()),
          maybe(output_mask[2], scale.sizes()), maybe(output_mask[3], bias.sizes()),
          at::empty({x.size(0), scale.size(0)}, x.options())};
}

}  // namespace
}  // namespace flaudit

TORCH_LIBRARY_FRAGMENT(flaudit, m) {
  // out[i,k] = act(scale[k] * h[i, k / (K/Q)] + bias[k]), h = x @ query^T; act 0/1/2 =
  // identity/relu/hardtanh(0, 1). Returns (out [B, K], h [B, Q]).
  m.def(
      "imprint_forward(Tensor x, Tensor query, Tensor scale, Tensor bias, int activation) "
      "-> (Tensor out, Tensor h)");
  // Gradients of the dense layer with rows scale[k] * query[k / (K/Q)]; output_mask selects
  // grad_x, grad_query, grad_scale, grad_bias (unselected ones come back undefined: None in
  // Python). grad_pre is
  // d loss / d pre [B, K].
  m.def(
      "imprint_backward(Tensor grad_out, Tensor x, Tensor query, Tensor scale, Tensor bias, "
      "Tensor h, int activation, bool[4] output_mask) -> (Tensor grad_x, Tensor grad_query, "
      "Tensor grad_scale, Tensor grad_bias, Tensor grad_pre)");
}

TORCH_LIBRARY_IMPL(flaudit, CPU, m) {
  m.impl("imprint_forward", &flaudit::imprint_forward_cpu);
  m.impl("imprint_backward", &flaudit::imprint_backward_cpu);
}

TORCH_LIBRARY_IMPL(flaudit, Meta, m) {
  m.impl("imprint_forward", &flaudit::imprint_forward_meta);
  m.impl("imprint_backward", &flaudit::imprint_backward_meta);
}
