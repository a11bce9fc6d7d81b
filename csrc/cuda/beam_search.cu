#include "beam_search.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>

#include "../core/beam_step.h"

namespace onerec {
namespace cuda {

namespace {

namespace bm = ::onerec::beam;

constexpr int kThreads = 256;
constexpr int kLseThreads = 256;
// Candidates per split block when a user's step is cut in two stages.
constexpr int64_t kCandidatesPerSplit = 8192;
constexpr int kMaxSplits = 16;
// Bound of the per-step key cache (8 bytes per candidate; about twice the fp32 log-probs it
// reads them from): beyond it the keys are recomputed in every radix pass, as without a cache.
constexpr size_t kMaxKeyCacheBytes = size_t{256} << 20;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// ---- 1. log-sum-exp of each live (user, beam) row --------------------------------------
template <typename T>
__global__ void row_lse_kernel(BeamStepArgs a, float* lse) {
  const int64_t row = blockIdx.x;  // b * W_in + w
  int64_t begin;
  if (bm::live_child_count(a.offsets, a.num_nodes, a.num_children, a.beam_states[row],
                           a.beam_scores[row], a.vocab, &begin) == 0) {
    return;  // dead beam: its lse is never read
  }
  const T* x = static_cast<const T*>(a.log_probs) + row * a.vocab;
  __shared__ float red[kLseThreads / 32];
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < a.vocab; i += blockDim.x) m = fmaxf(m, to_float(x[i]));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = red[0];
  for (int i = 1; i < kLseThreads / 32; ++i) m = fmaxf(m, red[i]);
  __syncthreads();
  float s = 0.f;  // a NaN anywhere makes the sum NaN, and the beam's candidates invalid
  for (int64_t i = threadIdx.x; i < a.vocab; i += blockDim.x) s += __expf(to_float(x[i]) - m);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float tot = 0.f;
    for (int i = 0; i < kLseThreads / 32; ++i) tot += red[i];
    lse[row] = m + __logf(tot);
  }
}

// ---- block-wide top-k of keys produced by key_at(i), i in [0, n) -------------------------
struct SelectShared {
  unsigned int hist[bm::kRadixBins];
  bm::RadixState st;
  unsigned int count;
};

// One pass's histogram update for the keys of a warp: lanes with the same digit are counted by
// one atomic of their leader (a pass's keys in play mostly share their top digits, so one
// shared-memory atomic per lane would serialize on a few bins). All 32 lanes of the warp call
// this together (full mask); lanes whose key is not in play pass digit = -1.
__device__ __forceinline__ void warp_histogram_add(unsigned int* hist, int digit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  const unsigned peers = __match_any_sync(0xffffffffu, digit);
  const int lane = threadIdx.x & 31;
  if (digit >= 0 && lane == __ffs(peers) - 1) {
    atomicAdd(&hist[digit], static_cast<unsigned>(__popc(peers)));
  }
#else
  if (digit >= 0) atomicAdd(&hist[digit], 1u);
#endif
}

// cache: nullptr, or room for n keys: the first pass computes each key once (key_at: a binary
// search and a log-prob gather) and stores it; later passes and the final selection read it
// back (coalesced 8-byte loads). Each index is written and reread by the same thread.
template <typename KeyAt>
__device__ void block_topk(const KeyAt& key_at, int64_t n, int64_t k, int k_pad, uint64_t* sel,
                           SelectShared& sh, uint64_t* cache) {
  if (threadIdx.x == 0) {
    sh.st = bm::radix_init(k);
    sh.count = 0;
  }
  __syncthreads();
  bool cached = false;  // uniform over the block
  while (!sh.st.done) {
    for (int d = threadIdx.x; d < bm::kRadixBins; d += blockDim.x) sh.hist[d] = 0;
    __syncthreads();
    const bm::RadixState st = sh.st;
    // The whole block walks the same number of rounds (blockDim is a multiple of 32), so every
    // warp is full in warp_histogram_add.
    for (int64_t base = 0; base < n; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      int digit = -1;
      if (i < n) {
        uint64_t key;
        if (cached) {
          key = cache[i];
        } else {
          key = key_at(i);
          if (cache != nullptr) cache[i] = key;
        }
        if (bm::radix_in_play(st, key)) digit = bm::radix_digit(st, key);
      }
      warp_histogram_add(sh.hist, digit);
    }
    cached = cache != nullptr;
    __syncthreads();
    if (threadIdx.x == 0) bm::radix_pick(sh.st, sh.hist);
    __syncthreads();
  }
  const bm::RadixState st = sh.st;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const uint64_t key = cached ? cache[i] : key_at(i);
    if (bm::radix_selected(st, key)) sel[atomicAdd(&sh.count, 1u)] = key;  // at most k of them
  }
  __syncthreads();
  for (int i = sh.count + threadIdx.x; i < k_pad; i += blockDim.x) sel[i] = bm::kInvalidKey;
  __syncthreads();
  // Bitonic sort, descending (keys are unique, so the order is total).
  for (int size = 2; size <= k_pad; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < k_pad; i += blockDim.x) {
        const int partner = i ^ stride;
        if (partner > i) {
          const uint64_t x = sel[i], y = sel[partner];
          const bool descending = (i & size) == 0;
          if (descending ? (x < y) : (x > y)) {
            sel[i] = y;
            sel[partner] = x;
          }
        }
      }
      __syncthreads();
    }
  }
}

// ---- 2. candidates of one user (or one split of them) -> top k --------------------------
template <typename T>
struct CandidateKeys {
  const T* lp;              // this user's (W_in, V) rows
  const int64_t* tokens;    // the level's child tokens
  const int64_t* scan;      // (W_in + 1,) exclusive prefix sum of child counts, in smem
  const int64_t* begin;     // (W_in,) first child of each beam, in smem
  const float* bscore;      // (W_in,)
  const float* lse;         // (W_in,)
  int64_t beams_in, vocab, base;

  __device__ uint64_t operator()(int64_t i) const {
    const int64_t c = base + i;
    int64_t lo = 0, hi = beams_in;  // largest w with scan[w] <= c
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) >> 1;
      if (scan[mid] <= c) lo = mid; else hi = mid;
    }
    const int64_t w = lo, j = c - scan[w];
    const int64_t tok = tokens[begin[w] + j];
    if (tok < 0 || tok >= vocab) return bm::kInvalidKey;
    return bm::candidate_key(bscore[w], to_float(lp[w * vocab + tok]), lse[w], w, j, vocab);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
select_kernel(BeamStepArgs a, const float* lse_all, uint64_t* split_keys, int num_splits,
              int k_pad, uint64_t* key_cache, int64_t cache_cap) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t W = a.beams_in, b = blockIdx.x, s = blockIdx.y;
  int64_t* scan = reinterpret_cast<int64_t*>(smem);            // W + 1
  int64_t* begin = scan + (W + 1);                               // W
  uint64_t* sel = reinterpret_cast<uint64_t*>(begin + W);       // k_pad
  int64_t* tsum = reinterpret_cast<int64_t*>(sel + k_pad);      // kThreads
  float* bscore = reinterpret_cast<float*>(tsum + kThreads);    // W
  float* lse = bscore + W;                                      // W
  __shared__ SelectShared sh;

  const float* bs_user = a.beam_scores + b * W;
  const int64_t* st_user = a.beam_states + b * W;
  // Per-beam tables, and the prefix sum of child counts over contiguous chunks of beams.
  const int64_t chunk = (W + kThreads - 1) / kThreads;
  const int64_t w0 = threadIdx.x * chunk, w1 = w0 + chunk < W ? w0 + chunk : W;
  int64_t local = 0;
  for (int64_t w = w0; w < w1; ++w) {
    int64_t first;
    const int64_t cnt = bm::live_child_count(a.offsets, a.num_nodes, a.num_children, st_user[w],
                                             bs_user[w], a.vocab, &first);
    begin[w] = first;
    bscore[w] = bs_user[w];
    lse[w] = (a.from_logits && cnt > 0) ? lse_all[b * W + w] : 0.f;
    scan[w] = cnt;  // count for now
    local += cnt;
  }
  tsum[threadIdx.x] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t run = 0;
    for (int i = 0; i < kThreads; ++i) {
      const int64_t v = tsum[i];
      tsum[i] = run;
      run += v;
    }
    scan[W] = run;
  }
  __syncthreads();
  int64_t run = tsum[threadIdx.x];
  for (int64_t w = w0; w < w1; ++w) {
    const int64_t cnt = scan[w];
    scan[w] = run;
    run += cnt;
  }
  __syncthreads();

  const int64_t total = scan[W];
  const int64_t lo = total * s / num_splits, hi = total * (s + 1) / num_splits;
  CandidateKeys<T> keys{static_cast<const T*>(a.log_probs) + b * W * a.vocab, a.tokens, scan,
                        begin, bscore, lse, W, a.vocab, lo};
  // The keys are cached when this block's candidates fit its slice of the workspace (sized
  // from the max_branching hint, which may be wrong: then they are recomputed every pass).
  uint64_t* cache = (hi - lo <= cache_cap) ? key_cache + (b * num_splits + s) * cache_cap : nullptr;
  block_topk(keys, hi - lo, a.beams_out, k_pad, sel, sh, cache);

  const int64_t K = a.beams_out;
  if (num_splits > 1) {
    uint64_t* out = split_keys + (b * num_splits + s) * K;
    for (int64_t r = threadIdx.x; r < K; r += blockDim.x) out[r] = sel[r];
    return;
  }
  for (int64_t r = threadIdx.x; r < K; r += blockDim.x) {
    const int64_t o = b * K + r;
    bm::write_slot(sel[r], st_user, a.offsets, a.tokens, a.vocab, a.scores + o, a.parents + o,
                   a.tokens_out + o, a.states + o);
  }
}

// ---- 3. merge of the splits' top lists ----------------------------------------------------
struct ListKeys {
  const uint64_t* keys;
  __device__ uint64_t operator()(int64_t i) const { return keys[i]; }
};

__global__ void __launch_bounds__(kThreads)
merge_kernel(BeamStepArgs a, const uint64_t* split_keys, int num_splits, int k_pad) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* sel = reinterpret_cast<uint64_t*>(smem);
  __shared__ SelectShared sh;
  const int64_t b = blockIdx.x, K = a.beams_out;
  ListKeys keys{split_keys + b * num_splits * K};
  block_topk(keys, num_splits * K, K, k_pad, sel, sh, nullptr);  // cheap keys: no cache
  const int64_t* st_user = a.beam_states + b * a.beams_in;
  for (int64_t r = threadIdx.x; r < K; r += blockDim.x) {
    const int64_t o = b * K + r;
    bm::write_slot(sel[r], st_user, a.offsets, a.tokens, a.vocab, a.scores + o, a.parents + o,
                   a.tokens_out + o, a.states + o);
  }
}

// Workspace layout: [lse (from_logits)] [splits' top lists (S > 1)] [key cache].
struct Workspace {
  size_t lse_bytes, split_bytes, cache_bytes;
  int64_t cache_cap;  // keys per (user, split) block
};

Workspace workspace_layout(const BeamStepArgs& a) {
  Workspace w;
  w.lse_bytes = a.from_logits ? ((a.batch * a.beams_in * sizeof(float) + 7) / 8) * 8 : 0;
  const int S = beam_step_num_splits(a);
  w.split_bytes = S > 1 ? static_cast<size_t>(a.batch) * S * a.beams_out * sizeof(uint64_t) : 0;
  const int64_t cands = a.beams_in * (a.max_branching > 0 ? a.max_branching : 1);
  w.cache_cap = (cands + S - 1) / S;
  w.cache_bytes = static_cast<size_t>(a.batch) * S * w.cache_cap * sizeof(uint64_t);
  if (w.cache_bytes > kMaxKeyCacheBytes) {  // a huge step recomputes its keys every pass
    w.cache_cap = 0;
    w.cache_bytes = 0;
  }
  return w;
}

template <typename T>
cudaError_t launch(const BeamStepArgs& a, void* workspace, cudaStream_t stream) {
  const int S = beam_step_num_splits(a);
  const int k_pad = static_cast<int>(next_pow2(a.beams_out));
  const Workspace ws = workspace_layout(a);
  char* base = static_cast<char*>(workspace);
  float* lse = reinterpret_cast<float*>(base);
  uint64_t* split_keys = reinterpret_cast<uint64_t*>(base + ws.lse_bytes);
  uint64_t* key_cache = reinterpret_cast<uint64_t*>(base + ws.lse_bytes + ws.split_bytes);
  if (a.from_logits) {
    row_lse_kernel<T><<<static_cast<unsigned>(a.batch * a.beams_in), kLseThreads, 0, stream>>>(a, lse);
  }
  const size_t W = static_cast<size_t>(a.beams_in);
  const size_t smem = (W + 1) * 8 + W * 8 + static_cast<size_t>(k_pad) * 8 + kThreads * 8 + W * 8;
  // The 48 KB default covers static + dynamic shared memory together: select_kernel's static
  // SelectShared (~1 KB) counts too, so a dynamic size just under 48 KB needs the opt-in as well.
  // Queried once (the same code on every device), so a graph capture makes no query.
  static const size_t static_smem = [] {
    cudaFuncAttributes attr{};
    if (cudaFuncGetAttributes(&attr, select_kernel<T>) != cudaSuccess) {
      cudaGetLastError();
      return sizeof(SelectShared) + 64;  // an upper bound: SelectShared is all of it
    }
    return attr.sharedSizeBytes;
  }();
  if (smem + static_smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        select_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  dim3 grid(static_cast<unsigned>(a.batch), static_cast<unsigned>(S));
  select_kernel<T><<<grid, kThreads, smem, stream>>>(a, lse, split_keys, S, k_pad, key_cache,
                                                     ws.cache_cap);
  if (S > 1) {
    const size_t msmem = static_cast<size_t>(k_pad) * 8;
    merge_kernel<<<static_cast<unsigned>(a.batch), kThreads, msmem, stream>>>(a, split_keys, S, k_pad);
  }
  return cudaGetLastError();
}

}  // namespace

namespace {

// SMs of the current device, looked up once per device (no query inside a graph capture after
// the first, uncaptured step); 0 when unknown.
int multiprocessor_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return 0;
  }
  int sms = cache[dev].load(std::memory_order_relaxed);
  if (sms == 0) {
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();  // clear it: the step itself reports real errors
      return 0;
    }
    cache[dev].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

}  // namespace

int beam_step_num_splits(const BeamStepArgs& a) {
  const int64_t cands = a.beams_in * (a.max_branching > 0 ? a.max_branching : 1);
  int64_t s = (cands + kCandidatesPerSplit - 1) / kCandidatesPerSplit;
  if (s < 1) s = 1;
  if (s > kMaxSplits) s = kMaxSplits;
  if (a.beams_out < 512) {
    // A narrow step splits only to fill the GPU: with fewer users than ~2 blocks per SM, one
    // block per user would leave SMs idle while it walks all of that user's candidates.
    const int sms = multiprocessor_count();
    if (sms <= 0) return 1;
    const int64_t fill = (2 * static_cast<int64_t>(sms) + a.batch - 1) / a.batch;
    if (s > fill) s = fill;
  }
  return static_cast<int>(s);
}

size_t beam_step_workspace_bytes(const BeamStepArgs& a) {
  const Workspace ws = workspace_layout(a);
  return ws.lse_bytes + ws.split_bytes + ws.cache_bytes;
}

cudaError_t beam_step_cuda(const BeamStepArgs& a, void* workspace, cudaStream_t stream) {
  if (a.batch <= 0 || a.beams_out <= 0 || a.beams_in <= 0) return cudaSuccess;
  if (a.beams_in > kMaxBeams || a.beams_out > kMaxBeams) return cudaErrorInvalidValue;
  switch (a.dtype) {
    case ScoreDType::kFloat32: return launch<float>(a, workspace, stream);
    case ScoreDType::kFloat16: return launch<__half>(a, workspace, stream);
    case ScoreDType::kBFloat16: return launch<__nv_bfloat16>(a, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace onerec
