// The sensitivity driver: validation, scales, threads and ISA dispatch around the per-ISA delta_dot kernels
// (sensitivity_ref.cpp, sensitivity_avx2.cpp, sensitivity_avx512.cpp).
#include "mpq/sensitivity.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "isa_dispatch.hpp"
#include "kernels.hpp"

namespace mpq {
namespace {

using detail::BlockScale;

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("sensitivity: " + what); }

// The kernels of the active ISA (isa_dispatch.hpp).
const detail::SensitivityKernels& kernels() {
  return detail::select(detail::scalar::kSensitivity, MPQ_AVX2_KERNELS(detail::avx2::kSensitivity),
                        MPQ_AVX512_KERNELS(detail::avx512::kSensitivity));
}

BlockScale scale_at(const QuantSpec& s, std::size_t k) {
  const std::size_t i = s.scales.size == 1 ? 0 : k;
  return {s.scales[i], 1.0f / s.scales[i], s.zero_points.size ? s.zero_points[i] : 0.0f};
}

}  // namespace

void sensitivity(const float* t, const float* g, std::size_t rows, std::size_t cols, std::size_t n_grads,
                 std::size_t sample_rows, Span<const QuantSpec> specs, double* out, int num_threads) {
  const std::size_t n = rows * cols;
  if (sample_rows == 0) fail("sample_rows must be positive");
  if (rows % sample_rows) fail("rows = " + std::to_string(rows) + " is not a multiple of sample_rows = " +
                               std::to_string(sample_rows));
  if (n_grads == 0) fail("n_grads must be positive");
  const std::size_t n_blocks = rows / sample_rows, n_specs = specs.size;
  for (std::size_t c = 0; c < n_specs; ++c) {
    const QuantSpec& s = specs[c];
    const std::string at = "spec " + std::to_string(c) + ": ";
    if (!s.format) fail(at + "format is null");
    if (n == 0) continue;
    if (!(s.block == n || (s.block > 0 && cols % s.block == 0)))
      fail(at + "block = " + std::to_string(s.block) + " must equal rows*cols = " + std::to_string(n) +
           " or divide cols = " + std::to_string(cols));
    const std::size_t blocks = n / s.block;
    if (s.scales.size != 0 && s.scales.size != 1 && s.scales.size != blocks)
      fail(at + "expected 0, 1 or " + std::to_string(blocks) + " scales, got " + std::to_string(s.scales.size));
    if (s.zero_points.size != 0 && s.zero_points.size != s.scales.size)
      fail(at + "zero_points must match scales in length");
    for (std::size_t i = 0; i < s.scales.size; ++i)
      if (!(s.scales[i] > 0.0f) || !std::isfinite(s.scales[i]) || !std::isfinite(1.0f / s.scales[i]))
        fail(at + "scale[" + std::to_string(i) + "] = " + std::to_string(s.scales[i]) + " must be positive and finite");
    if (s.scales.size == 0 && s.rule == ScaleRule::kHw && s.format->hw_scales.empty())
      fail(at + "format '" + s.format->name + "' has no hardware scale set");
  }
  const std::size_t n_out = n_grads * n_blocks * n_specs;
  std::fill(out, out + n_out, 0.0);
  if (n == 0 || n_specs == 0) return;
  if (!t || !g || !out) fail("null buffer");

  // Per-spec parameters, and the scale of specs with one computed scale for the whole tensor (one extra pass).
  std::vector<detail::Params> params(n_specs);
  std::vector<BlockScale> whole(n_specs, BlockScale{1.0f, 1.0f, 0.0f});
  for (std::size_t c = 0; c < n_specs; ++c) {
    const QuantSpec& s = specs[c];
    params[c] = detail::make_params(*s.format);
    if (s.block == n) {
      if (s.scales.size) {
        whole[c] = scale_at(s, 0);
      } else {
        float sc, zp;
        compute_scales(t, DType::kF32, n, n, *s.format, s.rule, &sc, &zp, num_threads);
        whole[c] = {sc, 1.0f / sc, zp};
      }
    }
  }

  const detail::SensitivityKernels& k = kernels();
  const auto kernel = k.delta_dot;
  const auto kernel_multi = k.delta_dot_multi;
  // With one gradient, every spec with one scale per row (per tensor or per row) runs in one fused pass per row.
  std::vector<std::size_t> fused;
  if (n_grads == 1)
    for (std::size_t c = 0; c < n_specs; ++c)
      if (specs[c].block == n || specs[c].block == cols) fused.push_back(c);
  // Work item: a chunk of rows (about 32 KiB of T, so it is still in cache when the kernel reads it after the
  // per-row / per-group scales of the whole chunk were computed from one min/max pass per block size).
  const std::size_t chunk_rows = std::max<std::size_t>(1, std::min<std::size_t>(64, 8192 / std::max<std::size_t>(1, cols)));
  const std::size_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
  // The distinct block sizes of the specs whose scales are computed per chunk, and each such spec's slot among them.
  std::vector<std::size_t> minmax_of, minmax_slot(n_specs, 0);
  for (std::size_t c = 0; c < n_specs; ++c)
    if (specs[c].block != n && !specs[c].scales.size) {
      const auto it = std::find(minmax_of.begin(), minmax_of.end(), specs[c].block);
      minmax_slot[c] = static_cast<std::size_t>(it - minmax_of.begin());
      if (it == minmax_of.end()) minmax_of.push_back(specs[c].block);
    }
  const auto minmax_blocks = detail::format_kernels().minmax_blocks;
  const int threads = static_cast<int>(std::min<std::size_t>(std::max(1, num_threads), n_chunks));
  std::vector<std::vector<double>> partial(threads, std::vector<double>(n_out, 0.0));
  std::exception_ptr error;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int tid = omp_get_thread_num();
    std::vector<double>& acc = partial[tid];
    std::vector<double> tmp(n_grads), facc(fused.size());
    std::vector<detail::Params> fparams(fused.size());
    std::vector<BlockScale> fscales(fused.size());
    for (std::size_t f = 0; f < fused.size(); ++f) fparams[f] = params[fused[f]];
    std::vector<std::vector<float>> sbuf(n_specs), zbuf(n_specs);
    for (std::size_t c = 0; c < n_specs; ++c)
      if (specs[c].block != n && !specs[c].scales.size) {
        sbuf[c].resize(chunk_rows * (cols / specs[c].block));
        zbuf[c].resize(sbuf[c].size());
      }
    // one min/max pass per block size over the chunk, shared by every spec that computes its scales on it
    std::vector<std::vector<detail::MinMax>> mbuf(minmax_of.size());
    for (std::size_t u = 0; u < minmax_of.size(); ++u) mbuf[u].resize(chunk_rows * (cols / minmax_of[u]));
#pragma omp for schedule(static)
    for (std::int64_t ci = 0; ci < static_cast<std::int64_t>(n_chunks); ++ci) {
      try {  // an exception may not leave an OpenMP region: keep the first, rethrow after it
        const std::size_t r0 = static_cast<std::size_t>(ci) * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
        // the chunk's scales: compute_scales' numbers, without its overhead, one min/max pass per block size
        for (std::size_t u = 0; u < minmax_of.size(); ++u)
          minmax_blocks(t + r0 * cols, DType::kF32, minmax_of[u], (r1 - r0) * cols / minmax_of[u], mbuf[u].data());
        for (std::size_t c = 0; c < n_specs; ++c)
          if (!sbuf[c].empty())
            detail::block_scales_from_minmax(mbuf[minmax_slot[c]].data(), (r1 - r0) * cols / specs[c].block,
                                             *specs[c].format, specs[c].rule, sbuf[c].data(), zbuf[c].data());
        for (std::size_t r = r0; r < r1; ++r) {
          const std::size_t b = r / sample_rows;
          const float* tr = t + r * cols;
          const float* gr = g + r * cols;
          if (!fused.empty()) {
            for (std::size_t f = 0; f < fused.size(); ++f) {
              const std::size_t c = fused[f];
              const QuantSpec& s = specs[c];
              fscales[f] = s.block == n ? whole[c]
                           : s.scales.size ? scale_at(s, r)
                                           : BlockScale{sbuf[c][r - r0], 1.0f / sbuf[c][r - r0], zbuf[c][r - r0]};
            }
            std::fill(facc.begin(), facc.end(), 0.0);
            kernel_multi(tr, gr, cols, fparams.data(), fscales.data(), fused.size(), facc.data());
            for (std::size_t f = 0; f < fused.size(); ++f) acc[b * n_specs + fused[f]] += facc[f];
          }
          for (std::size_t c = 0; c < n_specs; ++c) {
            const QuantSpec& s = specs[c];
            if (n_grads == 1 && (s.block == n || s.block == cols)) continue;  // done in the fused pass
            std::fill(tmp.begin(), tmp.end(), 0.0);
            if (s.block == n) {
              kernel(tr, gr, n, n_grads, cols, params[c], whole[c], tmp.data());
            } else {
              const std::size_t segs = cols / s.block;
              for (std::size_t j = 0; j < segs; ++j) {
                const std::size_t k = (r - r0) * segs + j;
                const BlockScale bs = s.scales.size ? scale_at(s, r * segs + j)
                                                    : BlockScale{sbuf[c][k], 1.0f / sbuf[c][k], zbuf[c][k]};
                kernel(tr + j * s.block, gr + j * s.block, n, n_grads, s.block, params[c], bs, tmp.data());
              }
            }
            for (std::size_t k = 0; k < n_grads; ++k) acc[(k * n_blocks + b) * n_specs + c] += tmp[k];
          }
        }
      } catch (...) {
#pragma omp critical
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  for (const auto& p : partial)
    for (std::size_t i = 0; i < n_out; ++i) out[i] += p[i];
}

}  // namespace mpq
