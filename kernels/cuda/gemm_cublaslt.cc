// Linear layers through cuBLASLt: bf16 A and B, f32 accumulation (CUBLAS_COMPUTE_32F), bf16
// output for activations and f32 output with beta = 1 for weight gradients, so dW accumulates
// straight into the f32 gradient without a bf16 round trip or a separate add.
//
// Row-major tensors are column-major transposes, so with X [N, K], W [M, K], Y [N, M] (all
// row-major) cuBLAS sees X' = X^T (K x N), W' = W^T (K x M), Y' = Y^T (M x N):
//   forward   Y' = W'^T X'           (m = M, n = N, k = K; A = W' transposed, B = X')
//   dX        dX' = W' dY'           (m = K, n = N, k = M; A = W', B = dY')
//   dW        dW' += X' dY'^T        (m = K, n = M, k = N; A = X', B = dY' transposed)
// The bias rides the forward's epilogue (CUBLASLT_EPILOGUE_BIAS adds a length-m vector, i.e. one
// value per output feature). Algorithms come from cuBLASLt's heuristic once per (shape, layout,
// types, alignment) and are cached with their descriptors: the heuristic costs tens of
// microseconds, more than a small GEMM.
//
// Determinism: cuBLAS(Lt) documents bit-wise identical results run to run for one algorithm on
// the same GPU model and toolkit (its split-K in-place reduction orders the parts with counters),
// and the cached choice is a function of the key alone. Deterministic mode (core/deterministic.h)
// caps the key's alignments at 16 bytes (the most any algorithm needs), so the choice depends on
// shapes and slice offsets only, never on where the allocator placed a buffer.
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "core/cuda/cuda_check.h"
#include "core/deterministic.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/dense_cuda.h"

namespace msa::cuda {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's recommendation for Hopper

struct GemmKey {
  int64_t m, n, k, lda, ldb, ldc;
  bool trans_a, trans_b;
  cudaDataType_t c_type;
  bool bias, accumulate;
  int align_a, align_b, align_c;
  bool deterministic;
  auto tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, trans_a, trans_b, c_type, bias, accumulate, align_a,
                    align_b, align_c, deterministic);
  }
  bool operator<(const GemmKey& o) const { return tie() < o.tie(); }
};

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

GemmPlan make_plan(const GemmKey& key) {
  GemmPlan p;
  MSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  MSA_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  MSA_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (key.bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    MSA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    const cudaDataType_t bias_type = CUDA_R_16BF;
    MSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                    &bias_type, sizeof(bias_type)));
  }
  // Stored (not op-applied) shapes of A and B: op(A) is m x k, op(B) is k x n.
  const int64_t a_rows = key.trans_a ? key.k : key.m, a_cols = key.trans_a ? key.m : key.k;
  const int64_t b_rows = key.trans_b ? key.n : key.k, b_cols = key.trans_b ? key.k : key.n;
  MSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, a_rows, a_cols, key.lda));
  MSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, b_rows, b_cols, key.ldb));
  MSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, key.c_type, key.m, key.n, key.ldc));

  cublasLtMatmulPreference_t pref = nullptr;
  MSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  MSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t aa = key.align_a, ab = key.align_b, ac = key.align_c;
  MSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
  MSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
  MSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
  MSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  MSA_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), p.op, p.a, p.b, p.c, p.c,
                                                  pref, 1, &result, &found));
  MSA_CHECK(found > 0,
            "cublasLtMatmulAlgoGetHeuristic: no algorithm for m=%d n=%d k=%d (transa %d, transb "
            "%d, %s output)",
            key.m, key.n, key.k, key.trans_a, key.trans_b,
            key.c_type == CUDA_R_32F ? "f32" : "bf16");
  p.algo = result.algo;
  cublasLtMatmulPreferenceDestroy(pref);
  return p;
}

const GemmPlan& plan_for(const GemmKey& key) {
  static std::mutex mu;
  static std::map<GemmKey, GemmPlan>* plans = new std::map<GemmKey, GemmPlan>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans->find(key);
  if (it == plans->end()) it = plans->emplace(key, make_plan(key)).first;
  return it->second;
}

// D (= C) = alpha op(A) op(B) + beta C, column-major, in the cuBLAS sense described above.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
          const void* b, int64_t ldb, void* c, int64_t ldc, cudaDataType_t c_type,
          bool accumulate, const void* bias) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    MSA_CHECK(accumulate, "gemm: k = 0 without accumulation is not supported");
    return;
  }
  const bool det = deterministic();
  auto align = [&](const void* p) {
    return det ? std::min(pointer_alignment(p), 16) : pointer_alignment(p);
  };
  const GemmKey key{m,        n,        k,        lda,     ldb,        ldc,
                    trans_a,  trans_b,  c_type,   bias != nullptr,     accumulate,
                    align(a), align(b), align(c), det};
  const GemmPlan& p = plan_for(key);
  if (bias != nullptr)
    MSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &bias, sizeof(bias)));
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  MSA_CUBLAS_CHECK(cublasLtMatmul(cublaslt_handle(), p.op, &alpha, a, p.a, b, p.b, &beta, c, p.c,
                                  c, p.c, &p.algo, workspace(kWorkspaceBytes),
                                  kWorkspaceBytes, nullptr));
}

}  // namespace

// dbias [M] f32 += column sums of dy [N, M] bf16 (kernels/cuda/elementwise_kernels.cu).
void bias_grad_accumulate(const Tensor& dy, Tensor& dbias);

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  check_dtype(x, DType::kBF16, "linear_forward (CUDA): x");
  check_dtype(w, DType::kBF16, "linear_forward (CUDA): w");
  check_dtype(y, DType::kBF16, "linear_forward (CUDA): y");
  if (bias.defined()) check_dtype(bias, DType::kBF16, "linear_forward (CUDA): bias");
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  gemm(/*trans_a=*/true, /*trans_b=*/false, M, N, K, w.raw_data(), K, x.raw_data(), K,
       y.raw_data(), M, CUDA_R_16BF, /*accumulate=*/false,
       bias.defined() ? bias.raw_data() : nullptr);
}

void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw,
                     Tensor& dbias, bool dx_accumulate) {
  check_dtype(x, DType::kBF16, "linear_backward (CUDA): x");
  check_dtype(w, DType::kBF16, "linear_backward (CUDA): w");
  check_dtype(dy, DType::kBF16, "linear_backward (CUDA): dy");
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  if (dx.defined()) {
    check_dtype(dx, DType::kBF16, "linear_backward (CUDA): dx");
    gemm(false, false, K, N, M, w.raw_data(), K, dy.raw_data(), M, dx.raw_data(), K, CUDA_R_16BF,
         dx_accumulate, nullptr);
  }
  if (dw.defined()) {
    check_dtype(dw, DType::kF32, "linear_backward (CUDA): dw");
    gemm(false, true, K, M, N, x.raw_data(), K, dy.raw_data(), M, dw.raw_data(), K, CUDA_R_32F,
         true, nullptr);
  }
  if (dbias.defined()) {
    check_dtype(dbias, DType::kF32, "linear_backward (CUDA): dbias");
    bias_grad_accumulate(dy, dbias);
  }
}

void gemm_bf16_nt(const Tensor& a, const Tensor& b, Tensor& c) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  // Row-major C [M, N] = A B^T is column-major C' = B'^T A' with B' = B^T (K x N).
  gemm(true, false, N, M, K, b.raw_data(), K, a.raw_data(), K, c.raw_data(), N, CUDA_R_16BF, false,
       nullptr);
}

}  // namespace msa::cuda
