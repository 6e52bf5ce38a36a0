// A stride-1 2-D convolution on Intel AMX: bf16 operands, float32 sums, NHWC x packed HWIO.
//
// XLA:CPU (jaxlib 0.10) reaches the AMX units for matrix products but not for convolutions: its
// bf16 convolution ran at 110-130 GFLOP/s on a 2-core Xeon whose bf16 products ran at 1500
// (BENCHMARKS.md, issue 26). This kernel is the direct convolution AMX makes simple: a tile's 16
// rows load with any stride, so the 16 input pixels of an output tile are read in place from the
// padded NHWC activation, one load per kernel tap and 32 input channels, with no patches.
//
// Layout. x: bf16 [N, Hx, Wp, C], already padded (Hx includes extra rows at the bottom so that the
// last tile's reads stay inside the buffer). Output pixels are numbered on the padded grid,
// q = oh * Wp + ow, so that 16 consecutive q read 16 consecutive input pixels for every tap; the
// columns ow >= W_out of that grid are computed and dropped. w: bf16 [k*k, C/32, O/16, 16, 16, 2],
// each [16, 16, 2] block a tile of 32 input channels (in pairs) x 16 output channels. y: float32
// [N, H_out, W_out, O]. C and O are multiples of 32.
//
// Blocking: four accumulator tiles (2 x 16 pixels x 2 x 16 channels) per step; output channels in
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
  int64_t n, hx, wp, c, h, w, o, k;
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

// Output channels [ob0, ob1) (in blocks of 16) of image n.
void conv_block(const uint16_t* x, const uint16_t* w, float* y, const Shape& s, int64_t n,
                int64_t ob0, int64_t ob1) {
  const int64_t cb_count = s.c / 32, ob_count = s.o / 16;
  const int64_t q_count = s.h * s.wp;
  const uint16_t* xn = x + n * s.hx * s.wp * s.c;
  float* yn = y + n * s.h * s.w * s.o;
  alignas(64) float scratch[4][16][16];
  for (int64_t q0 = 0; q0 < q_count; q0 += 32) {
    for (int64_t ob = ob0; ob < ob1; ob += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t kh = 0; kh < s.k; ++kh) {
        for (int64_t kw = 0; kw < s.k; ++kw) {
          const uint16_t* a = xn + (q0 + kh * s.wp + kw) * s.c;
          const uint16_t* b = w + (kh * s.k + kw) * cb_count * ob_count * 512;
          for (int64_t cb = 0; cb < cb_count; ++cb) {
            _tile_loadd(4, a + cb * 32, s.c * 2);
            _tile_loadd(5, a + 16 * s.c + cb * 32, s.c * 2);
            _tile_loadd(6, b + (cb * ob_count + ob) * 512, 64);
            _tile_loadd(7, b + (cb * ob_count + ob + 1) * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
      }
      _tile_stored(0, scratch[0], 64);
      _tile_stored(1, scratch[1], 64);
      _tile_stored(2, scratch[2], 64);
      _tile_stored(3, scratch[3], 64);
      for (int half = 0; half < 2; ++half) {
        for (int r = 0; r < 16; ++r) {
          const int64_t q = q0 + half * 16 + r;
          if (q >= q_count) break;
          const int64_t oh = q / s.wp, ow = q % s.wp;
          if (ow >= s.w) continue;
          float* dst = yn + (oh * s.w + ow) * s.o + ob * 16;
          std::memcpy(dst, scratch[half * 2][r], 64);
          std::memcpy(dst + 16, scratch[half * 2 + 1][r], 64);
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

ffi::Error AmxConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 6)
    return ffi::Error::InvalidArgument("amx_conv: x, w, y must be rank 4, 6, 4");
  Shape s{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], 0};
  int64_t taps = wd[0];
  while (s.k * s.k < taps) ++s.k;
  if (s.k * s.k != taps || s.c % 32 || s.o % 32 || wd[1] != s.c / 32 || wd[2] != s.o / 16 ||
      yd[0] != s.n || s.w + s.k - 1 > s.wp ||
      (((s.h * s.wp + 31) / 32) * 32 + (s.k - 1) * (s.wp + 1)) > s.hx * s.wp)
    return ffi::Error::InvalidArgument("amx_conv: inconsistent shapes");

  const auto* xp = reinterpret_cast<const uint16_t*>(x.typed_data());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.typed_data());
  float* yp = y->typed_data();
  const int64_t ob_count = s.o / 16;
  const int64_t pair_bytes = taps * (s.c / 32) * 2048;
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
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The process may use the AMX tile registers (Linux asks for it once per process): 0 when granted.
extern "C" int cnnbench_amx_request(void) {
  return static_cast<int>(syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                  18 /* XFEATURE_XTILEDATA */));
}
