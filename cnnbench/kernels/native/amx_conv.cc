// A 2-D convolution on Intel AMX: bf16 operands, float32 sums, NHWC input, packed kernel.
//
// XLA:CPU (jaxlib 0.10) reaches the AMX units for matrix products but not for convolutions: its
// bf16 convolution ran at 110-270 GFLOP/s on a 2-core Xeon whose bf16 products ran at 1500
// (BENCHMARKS.md, issue 26). This kernel is the direct convolution AMX makes simple: a tile's 16
// rows load with any stride, so the input rows of an output tile are read in place from the padded
// NHWC activation, with no patches. For one kernel row kh, the k pixels x C channels an output
// pixel sees are contiguous in NHWC, so the sum over them is one run of k*C values: a tile row
// holds 32 of them (the kernel rows are zero-padded to a multiple of 32; the values read past the
// run meet those zeros), and a tile's 16 rows are 16 output pixels, s*C values apart.
//
// Layout. x: bf16 [N, Hx, Wp, C], padded (Hx includes rows at the bottom so that the last tiles'
// reads stay inside the buffer). w: bf16 [k, KC, O/16, 16, 16, 2]: for kernel row kh, the k*C run
// zero-padded to KC*32 values, as tiles of 32 values (in pairs) x 16 output channels.
// y: float32 [N, H_out, W_out, O], O a multiple of 32. Output pixels go in blocks of 32 (grid()
// below); with stride 1 they are numbered on the padded grid, so the columns ow >= W_out of that
// grid are computed and dropped, and with any stride the pixels of a last block past the end.
//
// The buffers the kernels pack into start on 64-byte boundaries (Aligned64), as XLA's do: tile
// rows that straddle two cache lines ran at a third of the speed.
//
// Blocking: four accumulator tiles (2 x 16 pixels x 2 x 16 channels) at a time; output channels in
// groups whose weights fit the L2 budget, images and pixel blocks inside a group, so a group's
// weights and one image's input stay in the caches. Work is split over XLA's intra-op threads by
// (group, image).

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

constexpr int64_t kWeightBudget = 1024 * 1024;  // bytes of one output-channel group's weights

struct Shape {
  int64_t n, hx, wp, c, h, w, o, k, kc, s;
};

void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  // GCC 12 does not count ldtilecfg as reading its operand: without this barrier, -O3 may drop
  // the stores above where the function is inlined, and ldtilecfg faults on the stale bytes
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Every kernel below accumulates a 32 x 32 block of float32 sums in tiles 0-3 (tile 0 the top
// left 16 x 16, 1 top right, 2 bottom left, 3 bottom right), rows `stride` bytes apart in memory.
inline void start_block(const float* block, int64_t stride, bool zero) {
  if (zero) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    return;
  }
  _tile_loadd(0, block, stride);
  _tile_loadd(1, block + 16, stride);
  _tile_loadd(2, block + stride / 4 * 16, stride);
  _tile_loadd(3, block + stride / 4 * 16 + 16, stride);
}

inline void store_block(float* block, int64_t stride) {
  _tile_stored(0, block, stride);
  _tile_stored(1, block + 16, stride);
  _tile_stored(2, block + stride / 4 * 16, stride);
  _tile_stored(3, block + stride / 4 * 16 + 16, stride);
}

// One step of a block's sum: rows 0-15 and 16-31 (a0, a1: 16 rows of 32 bf16, `a_stride` bytes
// apart) times columns 0-15 and 16-31 (b0, b1: 16 rows of 16 bf16 pairs, `b_stride` bytes apart).
inline void block_step(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, const uint16_t* b0,
                       const uint16_t* b1, int64_t b_stride) {
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(5, a1, a_stride);
  _tile_loadd(6, b0, b_stride);
  _tile_loadd(7, b1, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// 32 output channels of one pixel into the output: float32 as they are, or bf16 rounded to
// nearest even (the output XLA's consumer converts back where it needs float32).
inline void store32(float* dst, const float* src) { std::memcpy(dst, src, 128); }

inline void store32(uint16_t* dst, const float* src) {
  _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src)));
}

// The block grid: stride 1, one row of every pixel of the padded grid (q = oh * Wp + ow), so
// that 32 consecutive q read 32 consecutive input pixels for every kernel row; stride s > 1, the
// output rows. Blocks of 32 pixels; the pixels a block computes past the output are dropped.
struct Grid {
  int64_t rows, cols;
};

Grid grid(const Shape& s) {
  if (s.s == 1) return {1, (s.h * s.wp + 31) / 32 * 32};
  return {s.h, (s.w + 31) / 32 * 32};
}

// Output channels [ob0, ob1) (in blocks of 16) of image n: 32 pixels at a time, four accumulator
// tiles (2 x 16 pixels x 2 x 16 channels) summed over the kernel rows and the 32-value pieces of
// each row's run. A block whose 32 pixels are 32 consecutive output pixels (float32 output) is
// stored from the tiles straight into y; any other goes through a scratch block, pixel by pixel,
// to the places worked out once per block (an integer division a pixel for every 32 channels had
// cost a 56x56x64 -> 64 3x3 layer 13% on one core, 1x1 layers 10-25%).
template <typename Out>
void conv_block(const uint16_t* x, const uint16_t* w, Out* y, const Shape& s, int64_t n,
                int64_t ob0, int64_t ob1) {
  const int64_t ob_count = s.o / 16, step = s.s * s.c;
  const Grid g = grid(s);
  const uint16_t* xn = x + n * s.hx * s.wp * s.c;
  Out* yn = y + n * s.h * s.w * s.o;
  alignas(64) float scratch[32][32];  // the block's 32 pixels x 32 output channels
  int64_t place[32];                  // each pixel's output pixel (oh * W_out + ow), -1: dropped
  for (int64_t row = 0; row < g.rows; ++row) {
    for (int64_t col0 = 0; col0 < g.cols; col0 += 32) {
      int64_t oh = row, ow = col0;
      if (s.s == 1) oh = col0 / s.wp, ow = col0 % s.wp;
      bool direct = std::is_same<Out, float>::value;
      for (int r = 0; r < 32; ++r, ++ow) {
        if (s.s == 1 && ow == s.wp) ow = 0, ++oh;
        place[r] = (oh < s.h && ow < s.w) ? oh * s.w + ow : -1;
        direct = direct && place[r] == place[0] + r && place[0] >= 0;
      }
      const uint16_t* a0 = xn + (row * s.s * s.wp + col0 * s.s) * s.c;
      const uint16_t* a1 = a0 + 16 * step;
      for (int64_t ob = ob0; ob < ob1; ob += 2) {
        start_block(nullptr, 0, true);
        for (int64_t kh = 0; kh < s.k; ++kh) {
          const int64_t shift = kh * s.wp * s.c;
          const uint16_t* b = w + (kh * s.kc * ob_count + ob) * 512;
          for (int64_t kc = 0; kc < s.kc; ++kc)
            block_step(a0 + shift + kc * 32, a1 + shift + kc * 32, step * 2, b + kc * ob_count * 512,
                       b + (kc * ob_count + 1) * 512, 64);
        }
        if (direct) {
          store_block(reinterpret_cast<float*>(yn + place[0] * s.o + ob * 16), s.o * 4);
          continue;
        }
        store_block(&scratch[0][0], 128);
        for (int r = 0; r < 32; ++r)
          if (place[r] >= 0) store32(yn + place[r] * s.o + ob * 16, scratch[r]);
      }
    }
  }
}

// A std::vector whose storage starts on a 64-byte boundary, as XLA's buffers do: tile loads and
// stores whose rows straddle two cache lines ran at a third of the speed (one core, the same
// products from aligned and 16-byte-aligned operands: 2300 against 750 GFLOP/s), and the C
// library aligns to 16 bytes. The weight gradient packed into such buffers: its 3x3 layers 2.2x
// faster with them aligned, 1x1 layers 1.3-2.1x.
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};

template <typename T>
using Buffer = std::vector<T, Aligned64<T>>;

struct Shared {
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::condition_variable done;
  int active = 0;
  bool closed = false;
};

// A buffer of `count` T that this thread keeps from one call to the next (slot: which of its
// buffers; it grows, never shrinks). XLA's worker threads run every step's kernels: a buffer
// allocated per call (about 1 MiB: a fresh mapping from the C library) had the kernel fault in
// and zero new pages on every call.
template <typename T>
T* thread_buffer(int slot, int64_t count) {
  static thread_local Buffer<T> buffers[3];
  Buffer<T>& buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(count);
  return buffer.data();
}

// Runs work(i) for i in [0, parts) on the calling thread and XLA's intra-op threads, each thread
// with its tiles configured, returning when all are done. A task the pool starts after the caller has taken every part touches nothing
// (the pool may be busy with another device's call that waits in the same way).
template <typename Work>
void run_parts(ffi::ThreadPool& pool, int64_t parts, const Work& work) {
  auto shared = std::make_shared<Shared>();
  auto take = [shared, parts, work]() {
    configure_tiles();
    for (int64_t i; (i = shared->next.fetch_add(1)) < parts;) work(i);
    _tile_release();
  };
  for (int64_t t = 0; t + 1 < parts && t < pool.num_threads(); ++t) {
    pool.Schedule([shared, take]() {
      {
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (shared->closed) return;
        ++shared->active;
      }
      take();
      {
        std::lock_guard<std::mutex> lock(shared->mutex);
        --shared->active;
      }
      shared->done.notify_all();
    });
  }
  take();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->closed = true;
  shared->done.wait(lock, [&] { return shared->active == 0; });
}

// Images [0, n) split over `parts` threads, work(n0, n1, dst) summing images [n0, n1) into dst:
// the first part into dw itself, the others into copies of their own, added to dw at the end.
template <typename Work>
void sum_over_images(ffi::ThreadPool& pool, int64_t parts, int64_t n, float* dw, int64_t size,
                     const Work& work) {
  std::vector<Buffer<float>> partial(parts - 1);
  run_parts(pool, parts, [&](int64_t part) {
    float* dst = dw;
    if (part > 0) {
      partial[part - 1].resize(size);
      dst = partial[part - 1].data();
    }
    work(n * part / parts, n * (part + 1) / parts, dst);
  });
  for (const auto& copy : partial)
    for (int64_t i = 0; i < size; ++i) dw[i] += copy[i];
}

// The furthest value (in elements, from the start of an image) a tile of `s` reads, plus one.
int64_t extent(const Shape& s) {
  const Grid g = grid(s);
  return ((g.rows - 1) * s.s * s.wp + (g.cols - 1) * s.s + (s.k - 1) * s.wp) * s.c + s.kc * 32;
}

template <ffi::DataType T>
ffi::Error AmxConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                       ffi::ResultBuffer<T> y, int64_t stride) {
  using Out = std::conditional_t<T == ffi::F32, float, uint16_t>;
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 6)
    return ffi::Error::InvalidArgument("amx_conv: x, w, y must be rank 4, 6, 4");
  Shape s{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], stride};
  if (s.s < 1 || s.o % 32 || wd[2] != s.o / 16 || s.kc * 32 < s.k * s.c || yd[0] != s.n ||
      (s.w - 1) * s.s + s.k > s.wp || extent(s) > s.hx * s.wp * s.c)
    return ffi::Error::InvalidArgument("amx_conv: inconsistent shapes");

  const auto* xp = reinterpret_cast<const uint16_t*>(x.typed_data());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.typed_data());
  Out* yp = reinterpret_cast<Out*>(y->typed_data());
  const int64_t ob_count = s.o / 16;
  const int64_t pair_bytes = s.k * s.kc * 2048;
  const int64_t group = std::max<int64_t>(1, kWeightBudget / pair_bytes) * 2;
  const int64_t groups = (ob_count + group - 1) / group;
  const int64_t items = groups * s.n;

  run_parts(pool, items, [=](int64_t i) {
    const int64_t g = i / s.n, n = i % s.n;
    conv_block(xp, wp, yp, s, n, g * group, std::min(ob_count, (g + 1) * group));
  });
  return ffi::Error::Success();
}


// ----------------------------------------------------------------------------- weight gradient
//
// A stride-1 layer's weight gradient, dW[kh, kw, c, o] = sum over images and output pixels of
// x[pixel + (kh, kw), c] * dy[pixel, o], as products whose shared axis is the pixels. AMX wants
// that axis contiguous in both operands (in pairs for the second), so the kernel packs its
// operands (rounding them to bf16 as it goes), a chunk of pixels at a time, the chunk's packed
// operands sized for the L2 cache:
// - dyT [O, pixels]: the output gradient transposed, its pixels numbered on the padded grid
//   (q = oh * Wp + ow, zeros at the columns ow >= W_out and past the image's last pixel);
// - xe, xo [pairs, C, 2]: the padded input as pairs of neighbouring pixels starting at even (xe)
//   and at odd (xo) pixels, so that the 32 pixels a kernel tap (kh, kw) meets from an even q are
//   16 rows of one of them (a 1x1 layer's one tap starts at even pixels only: no xo).
// A chunk holds whole 32-pixel pieces of one or more images. x: float32 or bf16 [N, H, W, C]
// (unpadded: the packing pads); dy: [N, H_out, W_out, O], the same type as x (float32 is rounded
// to bf16 as it is packed); dWT: float32 [k, k, O, C] (the caller
// transposes it). C and O multiples of 32. Threads split the (tap, 32 x 32 channel) blocks where
// dW is large against the activations, else the images, each then summing into its own copy.

struct GradShape {
  int64_t n, h, w, c, ho, wo, o, k, top, left, wp, qp, reach, chunk;
};

// bf16 of float32, rounded to nearest even (as XLA's convert), 32 values at a time, interleaved:
// out = [a0, b0, a1, b1, ..., a15, b15, ...] for a, b 32 values each (64 values out).
inline void interleave32(const float* a, const float* b, uint16_t* out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  const __m512i va = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + 16), _mm512_loadu_ps(a));
  const __m512i vb = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(b + 16), _mm512_loadu_ps(b));
  _mm512_storeu_si512(out, _mm512_permutex2var_epi16(va, lo, vb));
  _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi16(va, hi, vb));
}

// The same from bf16 values (already rounded: the caller kept its operands in bf16).
inline void interleave32(const uint16_t* a, const uint16_t* b, uint16_t* out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  const __m512i va = _mm512_loadu_si512(a), vb = _mm512_loadu_si512(b);
  _mm512_storeu_si512(out, _mm512_permutex2var_epi16(va, lo, vb));
  _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi16(va, hi, vb));
}

// The padded input's pixel p (on the padded grid) of image xn, or null for padding.
template <typename In>
inline const In* input_pixel(const In* xn, const GradShape& g, int64_t p) {
  const int64_t r = p / g.wp - g.top, col = p % g.wp - g.left;
  return (r >= 0 && r < g.h && col >= 0 && col < g.w) ? xn + (r * g.w + col) * g.c : nullptr;
}

// Pixels [p_start, p_end) of image n: their dy columns into dyt (row stride `cols`, from column
// `col0`), the input pairs they reach into xe / xo (from pair 0).
template <typename In>
void pack_piece(const In* x, const In* dy, const GradShape& g, int64_t n, int64_t p_start,
                int64_t p_end, uint16_t* dyt, int64_t cols, int64_t col0, uint16_t* xe,
                uint16_t* xo, const In* zeros) {
  const In* xn = x + n * g.h * g.w * g.c;
  const In* dyn = dy + n * g.ho * g.wo * g.o;
  alignas(64) uint16_t pair[2 * 512];
  for (int64_t j = 0; j < p_end - p_start; j += 2) {
    const In* rows[2];
    for (int t = 0; t < 2; ++t) {
      const int64_t q = p_start + j + t, oh = q / g.wp, ow = q % g.wp;
      rows[t] = (oh < g.ho && ow < g.wo) ? dyn + (oh * g.wo + ow) * g.o : zeros;
    }
    for (int64_t o0 = 0; o0 < g.o; o0 += 512) {
      const int64_t span = std::min<int64_t>(512, g.o - o0);
      for (int64_t o = 0; o < span; o += 32) interleave32(rows[0] + o0 + o, rows[1] + o0 + o, pair + 2 * o);
      const auto* words = reinterpret_cast<const uint32_t*>(pair);
      for (int64_t o = 0; o < span; ++o)
        *reinterpret_cast<uint32_t*>(dyt + (o0 + o) * cols + col0 + j) = words[o];
    }
  }
  const int64_t pairs = (p_end - p_start + g.reach) / 2;
  const In* prev = nullptr;
  for (int64_t i = 0; i <= pairs; ++i) {  // pixel p_start + 2i and its two right neighbours
    const In* p0 = input_pixel(xn, g, p_start + 2 * i);
    const In* p1 = input_pixel(xn, g, p_start + 2 * i + 1);
    p0 = p0 ? p0 : zeros;
    p1 = p1 ? p1 : zeros;
    for (int64_t c = 0; c < g.c; c += 32) {
      if (i < pairs) interleave32(p0 + c, p1 + c, xe + (i * g.c + c) * 2);
      if (i > 0 && g.k > 1) interleave32(prev + c, p0 + c, xo + ((i - 1) * g.c + c) * 2);
    }
    prev = p1;
  }
}

// One chunk: pieces (image, first pixel, pixels) laid side by side in dyt's columns, each piece's
// input pairs at its own offset in xe / xo; blocks [first, last) of dWT summed over them.
struct Piece {
  int64_t n, p_start, width, col0, pair0;
};

void grad_chunk(const std::vector<Piece>& pieces, const uint16_t* dyt, int64_t cols,
                const uint16_t* xe, const uint16_t* xo, float* dwt, const GradShape& g,
                int64_t first, int64_t last, bool zero) {
  const int64_t cb2 = g.c / 32, ob2 = g.o / 32;
  for (int64_t blk = first; blk < last; ++blk) {
    const int64_t cb = blk % cb2, ob = blk / cb2 % ob2, tap = blk / (cb2 * ob2);
    const int64_t shift = (tap / g.k) * g.wp + tap % g.k, parity = shift & 1;
    const uint16_t* xs = (parity ? xo : xe) + ((shift - parity) / 2) * g.c * 2 + cb * 64;
    const uint16_t* dy0 = dyt + ob * 32 * cols;
    float* out = dwt + (tap * g.o + ob * 32) * g.c + cb * 32;
    start_block(out, g.c * 4, zero);
    for (const Piece& piece : pieces) {
      for (int64_t p0 = 0; p0 < piece.width; p0 += 32) {
        const uint16_t* b0 = xs + (piece.pair0 + p0 / 2) * g.c * 2;
        const uint16_t* a0 = dy0 + piece.col0 + p0;
        block_step(a0, a0 + 16 * cols, cols * 2, b0, b0 + 32, g.c * 4);
      }
    }
    store_block(out, g.c * 4);
  }
}

// Images [n0, n1) through blocks [first, last) of dWT, a chunk at a time.
template <typename In>
void grad_range(const In* x, const In* dy, float* dwt, const GradShape& g, int64_t n0,
                int64_t n1, int64_t first, int64_t last) {
  const int64_t cols = g.chunk, pair_rows = (g.chunk + g.reach * (g.chunk / 32 + 1)) / 2 + 1;
  uint16_t* dyt = thread_buffer<uint16_t>(0, g.o * cols);
  uint16_t* xe = thread_buffer<uint16_t>(1, pair_rows * g.c * 2);
  uint16_t* xo = thread_buffer<uint16_t>(2, pair_rows * g.c * 2);
  std::vector<In> zeros(std::max(g.c, g.o), In(0));
  std::vector<Piece> pieces;
  bool zero = true;
  int64_t n = n0, p = 0;
  while (n < n1) {
    pieces.clear();
    int64_t col = 0, pair = 0;
    while (n < n1 && col < cols) {  // fill the chunk with pieces of whole 32-pixel blocks
      const int64_t width = std::min(g.qp - p, cols - col);
      const int64_t pairs = (width + g.reach) / 2;
      if (pair + pairs + 1 > pair_rows) break;
      pieces.push_back({n, p, width, col, pair});
      pack_piece(x, dy, g, n, p, p + width, dyt, cols, col, xe + pair * g.c * 2,
                 xo + pair * g.c * 2, zeros.data());
      col += width;
      pair += pairs + 1;
      p += width;
      if (p == g.qp) ++n, p = 0;
    }
    grad_chunk(pieces, dyt, cols, xe, xo, dwt, g, first, last, zero);
    zero = false;
  }
}

template <ffi::DataType T>
ffi::Error AmxConvWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<T> x, ffi::Buffer<T> dy,
                                 ffi::ResultBuffer<ffi::F32> dwt, int64_t top, int64_t left,
                                 int64_t wp) {
  using In = std::conditional_t<T == ffi::F32, float, uint16_t>;
  const auto xd = x.dimensions(), dd = dy.dimensions(), wd = dwt->dimensions();
  if (xd.size() != 4 || dd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("amx_conv_weight_grad: ranks must be 4, 4, 4");
  GradShape g{xd[0], xd[1], xd[2], xd[3], dd[1], dd[2], dd[3], wd[0], top, left, wp, 0, 0, 0};
  g.qp = (g.ho * g.wp + 31) / 32 * 32;
  g.reach = ((g.k - 1) * (g.wp + 1) + 3) / 2 * 2;  // input pixels past a piece its taps meet, even
  if (dd[0] != g.n || wd[1] != g.k || wd[2] != g.o || wd[3] != g.c || g.c % 32 || g.o % 32 ||
      g.wo + g.k - 1 > g.wp || g.left + g.w > g.wp || g.top < 0 || g.left < 0)
    return ffi::Error::InvalidArgument("amx_conv_weight_grad: inconsistent shapes");
  // pixels a chunk (a multiple of 32): its packed output gradient and input pairs in about 1 MiB
  g.chunk = std::max<int64_t>(32, (1 << 20) / ((g.o + 2 * g.c) * 2) / 32 * 32);

  const auto* x_p = reinterpret_cast<const In*>(x.typed_data());
  const auto* dy_p = reinterpret_cast<const In*>(dy.typed_data());
  float* dw_p = dwt->typed_data();
  const int64_t dw_size = g.k * g.k * g.o * g.c, blocks = g.k * g.k * (g.c / 32) * (g.o / 32);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());  // the caller and the pool share the cores
  // dW larger than a thread's share of the activations: split the blocks (every thread packs
  // every image); else split the images (each thread its own dW, summed at the end)
  const bool by_blocks = dw_size * threads > g.n * (g.h * g.w * g.c + g.ho * g.wo * g.o) || g.n < threads;
  const int64_t parts = std::max<int64_t>(1, std::min(threads, by_blocks ? blocks : g.n));
  if (by_blocks) {
    run_parts(pool, parts, [&](int64_t part) {
      grad_range(x_p, dy_p, dw_p, g, 0, g.n, blocks * part / parts, blocks * (part + 1) / parts);
    });
  } else {
    sum_over_images(pool, parts, g.n, dw_p, dw_size, [&](int64_t n0, int64_t n1, float* dst) {
      grad_range(x_p, dy_p, dst, g, n0, n1, 0, blocks);
    });
  }
  return ffi::Error::Success();
}

// ------------------------------------------------- weight gradient of a layer on few channels
//
// An RGB stem (ResNet's 7x7/2 on 3 channels): padding its 3 channels to 32 for the kernel above
// would multiply mostly zeros. Here the products run the other way round: for kernel row kh,
// dW[kh][j, o] = sum over output pixels p of run[p][j] * dy[p][o], where run[p] are the k*C values
// (k pixels x C channels, contiguous in NHWC) kernel row kh meets for output pixel p. The runs are
// packed transposed ([j, pixels], j padded to a multiple of 32), the output gradient as pairs of
// pixels ([pixel pairs, O, 2]): 7x7x3 is 21 values a row, padded to 32, not 7 x 32. Any stride.
// x: float32 [N, Hp, Wp, C] padded; dy: float32 [N, H_out, W_out, O]; dWr: float32 [k, R, O], R
// the run k*C padded to a multiple of 32 (the caller cuts and reshapes it). O a multiple of 32.

struct RunShape {
  int64_t n, hp, wp, c, ho, wo, o, k, s, run, rows, pixels, chunk;
};

void run_range(const float* x, const float* dy, float* dw, const RunShape& g, int64_t n0, int64_t n1) {
  Buffer<uint16_t> a(g.rows * g.chunk, 0), b(g.chunk * g.o);  // a's rows past the run stay 0
  std::vector<float> zeros(g.o, 0.0f);
  std::vector<int32_t> start(g.chunk);  // each pixel's run, kernel row 0, from the image's start
  const int64_t jb2 = g.rows / 32, ob2 = g.o / 32;
  bool zero = true;
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * g.hp * g.wp * g.c;
    const float* dyn = dy + n * g.ho * g.wo * g.o;
    for (int64_t p_start = 0; p_start < g.pixels; p_start += g.chunk) {
      const int64_t width = std::min(g.chunk, g.pixels - p_start);  // a multiple of 32
      for (int64_t j = 0; j < width; j += 2) {  // the output gradient as pixel pairs
        const int64_t p = p_start + j;
        const float* r0 = p < g.ho * g.wo ? dyn + p * g.o : zeros.data();
        const float* r1 = p + 1 < g.ho * g.wo ? dyn + (p + 1) * g.o : zeros.data();
        for (int64_t o = 0; o < g.o; o += 32) interleave32(r0 + o, r1 + o, b.data() + (j / 2) * g.o * 2 + o * 2);
      }
      for (int64_t j = 0; j < width; ++j) {
        const int64_t p = std::min(p_start + j, g.ho * g.wo - 1);  // (pixels past the last are masked)
        start[j] = static_cast<int32_t>(((p / g.wo) * g.s * g.wp + (p % g.wo) * g.s) * g.c);
      }
      for (int64_t kh = 0; kh < g.k; ++kh) {
        // The runs transposed, 16 pixels at a time: value r of each pixel's run gathered, rounded
        // to bf16 (nearest even) and stored as 16 consecutive values of row r; pixels past the
        // last are zeros (their dy is zero too, but not NaN-proof).
        const float* row = xn + kh * g.wp * g.c;
        for (int64_t j = 0; j < width; j += 16) {
          const int64_t left = g.ho * g.wo - (p_start + j);
          const __mmask16 valid = left >= 16 ? 0xffff : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
          const __m512i at = _mm512_loadu_si512(start.data() + j);
          for (int64_t r = 0; r < g.run; ++r) {
            const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, at, row + r, 4);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.data() + r * g.chunk + j),
                                (__m256i)_mm512_cvtneps_pbh(v));
          }
        }
        for (int64_t jb = 0; jb < jb2; ++jb) {
          for (int64_t ob = 0; ob < ob2; ++ob) {
            float* out = dw + (kh * g.rows + jb * 32) * g.o + ob * 32;
            start_block(out, g.o * 4, zero);
            const uint16_t* a0 = a.data() + jb * 32 * g.chunk;
            for (int64_t p0 = 0; p0 < width; p0 += 32) {
              const uint16_t* b0 = b.data() + (p0 / 2) * g.o * 2 + ob * 64;
              block_step(a0 + p0, a0 + 16 * g.chunk + p0, g.chunk * 2, b0, b0 + 32, g.o * 4);
            }
            store_block(out, g.o * 4);
          }
        }
      }
      zero = false;
    }
  }
}

ffi::Error AmxConvWeightGradRunImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                    ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dwr,
                                    int64_t stride) {
  const auto xd = x.dimensions(), dd = dy.dimensions(), wd = dwr->dimensions();
  if (xd.size() != 4 || dd.size() != 4 || wd.size() != 3)
    return ffi::Error::InvalidArgument("amx_conv_weight_grad_run: ranks must be 4, 4, 3");
  RunShape g{xd[0], xd[1], xd[2], xd[3], dd[1], dd[2], dd[3], wd[0], stride, 0, wd[1], 0, 0};
  g.run = g.k * g.c;
  g.pixels = (g.ho * g.wo + 31) / 32 * 32;
  if (dd[0] != g.n || wd[2] != g.o || g.o % 32 || g.rows % 32 || g.rows < g.run || g.s < 1 ||
      (g.ho - 1) * g.s + g.k > g.hp || (g.wo - 1) * g.s + g.k > g.wp)
    return ffi::Error::InvalidArgument("amx_conv_weight_grad_run: inconsistent shapes");
  g.chunk = std::min(g.pixels, std::max<int64_t>(32, (1 << 20) / ((g.rows + g.o) * 2) / 32 * 32));
  const float* x_p = x.typed_data();
  const float* dy_p = dy.typed_data();
  float* dw_p = dwr->typed_data();
  const int64_t dw_size = g.k * g.rows * g.o;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), g.n));
  sum_over_images(pool, parts, g.n, dw_p, dw_size, [&](int64_t n0, int64_t n1, float* dst) {
    run_range(x_p, dy_p, dst, g, n0, n1);
  });
  return ffi::Error::Success();
}

// The handlers' signatures: the forward convolution (bf16 operands, float32 or bf16 output), the
// weight gradient (float32 or bf16 operands).
template <ffi::DataType Out>
auto conv_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::BF16>>()
      .Arg<ffi::Buffer<ffi::BF16>>()
      .Ret<ffi::Buffer<Out>>()
      .template Attr<int64_t>("stride");
}

template <ffi::DataType In>
auto weight_grad_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<In>>()
      .template Arg<ffi::Buffer<In>>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Attr<int64_t>("top")
      .template Attr<int64_t>("left")
      .template Attr<int64_t>("wp");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnbenchAmxConv, AmxConvImpl<ffi::F32>, conv_binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnbenchAmxConvBf16, AmxConvImpl<ffi::BF16>, conv_binding<ffi::BF16>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnbenchAmxConvWeightGrad, AmxConvWeightGradImpl<ffi::F32>,
                              weight_grad_binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnbenchAmxConvWeightGradBf16, AmxConvWeightGradImpl<ffi::BF16>,
                              weight_grad_binding<ffi::BF16>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnbenchAmxConvWeightGradRun, AmxConvWeightGradRunImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

// The process may use the AMX tile registers (Linux asks for it once per process): 0 when granted.
extern "C" int cnnbench_amx_request(void) {
  return static_cast<int>(syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                  18 /* XFEATURE_XTILEDATA */));
}
