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
  _tile_loadconfig(&cfg);
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
// each row's run, then copied out pixel by pixel (the output is exact: no grid to cut back).
void conv_block(const uint16_t* x, const uint16_t* w, float* y, const Shape& s, int64_t n,
                int64_t ob0, int64_t ob1) {
  const int64_t ob_count = s.o / 16, step = s.s * s.c;
  const Grid g = grid(s);
  const uint16_t* xn = x + n * s.hx * s.wp * s.c;
  float* yn = y + n * s.h * s.w * s.o;
  alignas(64) float scratch[4][16][16];
  for (int64_t row = 0; row < g.rows; ++row) {
    for (int64_t col0 = 0; col0 < g.cols; col0 += 32) {
      const uint16_t* a0 = xn + (row * s.s * s.wp + col0 * s.s) * s.c;
      const uint16_t* a1 = a0 + 16 * step;
      for (int64_t ob = ob0; ob < ob1; ob += 2) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t kh = 0; kh < s.k; ++kh) {
          const int64_t shift = kh * s.wp * s.c;
          const uint16_t* b = w + kh * s.kc * ob_count * 512;
          for (int64_t kc = 0; kc < s.kc; ++kc) {
            _tile_loadd(4, a0 + shift + kc * 32, step * 2);
            _tile_loadd(5, a1 + shift + kc * 32, step * 2);
            _tile_loadd(6, b + (kc * ob_count + ob) * 512, 64);
            _tile_loadd(7, b + (kc * ob_count + ob + 1) * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, scratch[0], 64);
        _tile_stored(1, scratch[1], 64);
        _tile_stored(2, scratch[2], 64);
        _tile_stored(3, scratch[3], 64);
        for (int r = 0; r < 32; ++r) {
          int64_t oh = row, ow = col0 + r;
          if (s.s == 1) oh = ow / s.wp, ow = ow % s.wp;
          if (oh >= s.h) break;
          if (ow >= s.w) continue;
          float* dst = yn + (oh * s.w + ow) * s.o + ob * 16;
          std::memcpy(dst, scratch[(r >> 4) * 2][r & 15], 64);
          std::memcpy(dst + 16, scratch[(r >> 4) * 2 + 1][r & 15], 64);
        }
      }
    }
  }
}

struct Shared {
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::condition_variable done;
  int active = 0;
  bool closed = false;
};

// The furthest value (in elements, from the start of an image) a tile of `s` reads, plus one.
int64_t extent(const Shape& s) {
  const Grid g = grid(s);
  return ((g.rows - 1) * s.s * s.wp + (g.cols - 1) * s.s + (s.k - 1) * s.wp) * s.c + s.kc * 32;
}

ffi::Error AmxConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
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
  float* yp = y->typed_data();
  const int64_t ob_count = s.o / 16;
  const int64_t pair_bytes = s.k * s.kc * 2048;
  const int64_t group = std::max<int64_t>(1, kWeightBudget / pair_bytes) * 2;
  const int64_t groups = (ob_count + group - 1) / group;
  const int64_t items = groups * s.n;

  auto shared = std::make_shared<Shared>();
  auto work = [shared, xp, wp, yp, s, group, ob_count, items]() {
    configure_tiles();
    for (int64_t i; (i = shared->next.fetch_add(1)) < items;) {
      const int64_t g = i / s.n, n = i % s.n;
      conv_block(xp, wp, yp, s, n, g * group, std::min(ob_count, (g + 1) * group));
    }
    _tile_release();
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([shared, work]() {
      {
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (shared->closed) return;  // the caller finished everything: touch nothing
        ++shared->active;
      }
      work();
      {
        std::lock_guard<std::mutex> lock(shared->mutex);
        --shared->active;
      }
      shared->done.notify_all();
    });
  }
  work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->closed = true;
  shared->done.wait(lock, [&] { return shared->active == 0; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnbenchAmxConv, AmxConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

// The process may use the AMX tile registers (Linux asks for it once per process): 0 when granted.
extern "C" int cnnbench_amx_request(void) {
  return static_cast<int>(syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                  18 /* XFEATURE_XTILEDATA */));
}
