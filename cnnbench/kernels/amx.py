"""Convolutions on Intel AMX (bf16 operands, float32 sums) through a native kernel.

XLA:CPU in jaxlib 0.10 hands bf16 matrix products to the AMX units (1543 GFLOP/s on a 2-core Xeon)
but not convolutions: its bf16 convolution, YNNPACK's included, ran at 110-270 GFLOP/s, and the
formulations of :mod:`cnnbench.kernels.fastops` spend most of their time building Winograd tiles
and patches, not in the products (BENCHMARKS.md, issue 26). ``native/amx_conv.cc`` is a direct
convolution on the tile registers: no patches, its 16-pixel input tiles read in place from the
padded activation (``native/amx_conv.cc`` says how). Per layer, batch 32, two cores: 28x28x128
-> 128 3x3 in 4.4 ms (PyTorch's oneDNN with autocast: 2.8; the bf16 Winograd form: 25.5),
AlexNet's 27x27x64 -> 192 5x5 in 6.8 (5.5; 40.3).

The kernel is C++ against XLA's FFI headers (shipped in jaxlib), compiled with the system's ``g++``
the first time a process asks for it and kept in cnnbench's cache folder under a name that hashes
the source, the compiler and jaxlib's version. :func:`available` is false (and the fast
formulations carry on as before) where the CPU has no ``amx_bf16``, the kernel does not build, or
Linux refuses the tile registers; ``CNNBENCH_AMX=0`` turns it off. :func:`conv` is the forward
convolution, any stride, and 1x1 at stride 1 (inference takes its output rounded once to bf16,
training the float32 sums); the input gradient of a stride-1 layer is the same convolution of the
output gradient with the kernel turned round (:mod:`cnnbench.kernels.fastops`); :func:`weight_grad`
(float32 or bf16 operands) and :func:`run_weight_grad` the weight gradients of stride-1 layers and
of few-channel layers. Values the tiles
read past a window meet zero weights, so a NaN or infinity in the input spreads to neighbouring
outputs (as it does to the whole network at the next layer anyway).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnbench.kernels.products import cpu_flags

SOURCE = Path(__file__).with_name("native") / "amx_conv.cc"
TARGET = "cnnbench_amx_conv"
BF16_TARGET = "cnnbench_amx_conv_bf16"
WEIGHT_GRAD_TARGET = "cnnbench_amx_conv_weight_grad"
WEIGHT_GRAD_BF16_TARGET = "cnnbench_amx_conv_weight_grad_bf16"
RUN_WEIGHT_GRAD_TARGET = "cnnbench_amx_conv_weight_grad_run"
#: why the kernel is not in use, once :func:`available` has looked (None: it is)
reason: str | None = None


def _library_path(compiler: str) -> Path:
    from importlib.metadata import version as installed

    from cnnbench.cache import cache_dir

    compiler_version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    stamp = SOURCE.read_bytes() + compiler_version.encode() + installed("jaxlib").encode()
    key = hashlib.sha256(stamp).hexdigest()[:16]
    return cache_dir() / "native" / f"amx_conv-{key}.so"


def build(compiler: str = "g++") -> Path:
    """The compiled kernel's path, building it first if the cache has none (raises OSError or
    CalledProcessError when it cannot be built)."""
    if shutil.which(compiler) is None:
        raise OSError(f"no {compiler} on PATH")
    path = _library_path(compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        subprocess.run([compiler, "-O3", "-std=c++17", "-mamx-tile", "-mamx-bf16", "-mavx512f", "-mavx512bw",
                        "-mavx512bf16", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE),
                        "-o", str(out)],
                       check=True, capture_output=True, text=True)
        os.replace(out, path)  # atomic: a concurrent process sees the whole library or none
    return path


@functools.cache
def available() -> bool:
    """Whether :func:`conv` can run here: a CPU with AMX bf16, the kernel built and registered with
    XLA, the tile registers granted (each checked once per process; :data:`reason` says which
    failed)."""
    global reason
    if os.environ.get("CNNBENCH_AMX", "1").strip() == "0":
        reason = "CNNBENCH_AMX=0"
        return False
    if "amx_bf16" not in cpu_flags():
        reason = "this CPU has no amx_bf16"
        return False
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        reason = f"the AMX kernel did not build: {detail.strip().splitlines()[-1] if detail.strip() else exc}"
        return False
    if lib.cnnbench_amx_request() != 0:
        reason = "Linux refused this process the AMX tile registers"
        return False
    for target, symbol in ((TARGET, lib.CnnbenchAmxConv), (BF16_TARGET, lib.CnnbenchAmxConvBf16),
                           (WEIGHT_GRAD_TARGET, lib.CnnbenchAmxConvWeightGrad),
                           (WEIGHT_GRAD_BF16_TARGET, lib.CnnbenchAmxConvWeightGradBf16),
                           (RUN_WEIGHT_GRAD_TARGET, lib.CnnbenchAmxConvWeightGradRun)):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    reason = None
    return True


def supported(k: int, s: int) -> bool:
    """The layers the kernel computes: square kernels of 2x2 to 11x11, strides 1 to 4, and 1x1
    layers at stride 1 (one run of C values a pixel: a matrix product whose rows the tiles read
    in place). A strided 1x1 layer is a product of its subsampled input: per layer (batch 32)
    28x28x512 -> 1024 took 7.8 ms as that product, 11.6 on the kernel (BENCHMARKS.md, issue 26)."""
    return (1 < k <= 11 and 1 <= s <= 4) or (k == 1 and s == 1)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def pack(w) -> jax.Array:
    """An HWIO kernel as the kernel's tiles: bf16 ``[k, KC, O/16, 16, 16, 2]``. Per kernel row the
    ``k * C`` values one output pixel meets (kernel columns, then channels: NHWC's order) are
    zero-padded to ``KC * 32``; output channels to a multiple of 32."""
    k, _, c, o = w.shape
    run, op = k * c, _round_up(o, 32)
    kc = -(-run // 32)
    rows = jnp.pad(w.astype(jnp.bfloat16).reshape(k, run, o), ((0, 0), (0, kc * 32 - run), (0, op - o)))
    return rows.reshape(k, kc, 16, 2, op // 16, 16).transpose(0, 1, 4, 2, 5, 3)


def conv(x, w, stride: int, pads, out=jnp.float32) -> jax.Array:
    """NHWC x HWIO convolution with explicit ``pads`` ((top, bottom), (left, right)): bf16
    operands, float32 sums, the result in ``out`` (float32, or bf16: the sums rounded once).

    One custom call on the whole array it is given: on a mesh, call it on each device's images
    (the layers do, inside ``shard_map``: :mod:`cnnbench.parallel.partition`); XLA's partitioner
    would gather a batch-sharded operand onto every device first."""
    return conv_packed(x, pack(w), stride, pads, w.shape[-1], out)


def conv_packed(x, packed, stride: int, pads, channels: int, out=jnp.float32) -> jax.Array:
    """:func:`conv` with its kernel already packed (:func:`pack`; ``channels``: its output
    channels before padding): what the inference program runs, its kernels packed once."""
    n, h, wd, c = x.shape
    k = packed.shape[0]
    (top, bottom), (left, right) = pads
    wp = wd + left + right
    h_out, w_out = (h + top + bottom - k) // stride + 1, (wp - k) // stride + 1
    kc, op = packed.shape[1], packed.shape[2] * 16
    # the pixel grid the kernel's 32-pixel blocks cover (amx_conv.cc's grid()): stride 1 one row of
    # every pixel of the padded grid, else the output rows; the furthest value a tile reads (its
    # extent()), then input rows enough to hold it
    rows, cols = (1, _round_up(h_out * wp, 32)) if stride == 1 else (h_out, _round_up(w_out, 32))
    reach = ((rows - 1) * stride * wp + (cols - 1) * stride + (k - 1) * wp) * c + kc * 32
    height = max(h + top + bottom, -(-reach // (wp * c)))
    xp = jnp.pad(x.astype(jnp.bfloat16), ((0, 0), (top, height - h - top), (left, right), (0, 0)))
    target = BF16_TARGET if jnp.dtype(out) == jnp.bfloat16 else TARGET
    y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((n, h_out, w_out, op), out))(
        xp, packed, stride=np.int64(stride))
    return y[..., :channels] if op != channels else y


def weight_grad(x, dy, k: int, pads) -> jax.Array:
    """A stride-1 layer's weight gradient (HWIO, float32) from its input ``x`` and output gradient
    ``dy``: bf16 operands, float32 sums (the kernel pads and packs them itself, rounding float32
    ones as it goes: ``amx_conv.cc``; either one bf16, both are taken in bf16, which rounds them
    the same way). Channels are zero-padded to multiples of 32 where needed."""
    c, o = x.shape[-1], dy.shape[-1]
    if k == 1 and c < o and not any(p for pad in pads for p in pad):
        # the kernel transposes its second operand; a 1x1 layer's two operands are alike (same
        # pixels, no taps), so the one with fewer channels goes second and dW comes out as HWIO
        # (batch 32, with the 1x1 packing its one tap needs: 56x56x64 -> 256 8.3-8.5 -> 4.8-6.7 ms,
        # 28x28x128 -> 512 5.8-6.0 -> 2.4-5.0; BENCHMARKS.md, issue 26)
        return weight_grad(dy, x, 1, pads).transpose(0, 1, 3, 2)
    (top, _), (left, right) = pads
    cp, op = _round_up(c, 32), _round_up(o, 32)
    low = jnp.bfloat16 in (x.dtype, dy.dtype)
    x = x.astype(jnp.bfloat16 if low else jnp.float32)
    dy = dy.astype(x.dtype)
    if cp != c:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, cp - c)))
    if op != o:
        dy = jnp.pad(dy, ((0, 0), (0, 0), (0, 0), (0, op - o)))
    dwt = jax.ffi.ffi_call(WEIGHT_GRAD_BF16_TARGET if low else WEIGHT_GRAD_TARGET,
                           jax.ShapeDtypeStruct((k, k, op, cp), jnp.float32))(
        x, dy, top=np.int64(top), left=np.int64(left), wp=np.int64(x.shape[2] + left + right))
    return dwt.transpose(0, 1, 3, 2)[:, :, :c, :o]


def run_weight_grad(x, dy, k: int, stride: int, pads) -> jax.Array:
    """The weight gradient (HWIO, float32) of a layer on few input channels (an RGB stem), any
    stride: per kernel row, the k*C values each output pixel meets, transposed, times the output
    gradient (``amx_conv.cc``); bf16 operands, float32 sums."""
    c, o = x.shape[-1], dy.shape[-1]
    op = _round_up(o, 32)
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), *pads, (0, 0)))
    dy = dy.astype(jnp.float32)
    if op != o:
        dy = jnp.pad(dy, ((0, 0), (0, 0), (0, 0), (0, op - o)))
    rows = _round_up(k * c, 32)
    dwr = jax.ffi.ffi_call(RUN_WEIGHT_GRAD_TARGET, jax.ShapeDtypeStruct((k, rows, op), jnp.float32))(
        xp, dy, stride=np.int64(stride))
    return dwr[:, :k * c, :o].reshape(k, k, c, o)


def off_note() -> str | None:
    """One line for a user of ``--precision bf16`` on a CPU with AMX where the kernel is off for a
    reason they did not choose (it did not build, Linux refused the tiles); else None."""
    if "amx_bf16" not in cpu_flags() or available() or reason == "CNNBENCH_AMX=0":
        return None
    return (f"--precision bf16: this CPU has AMX but cnnbench's AMX convolution is off ({reason}); "
            "convolutions take the slower XLA and Winograd forms with bf16 products (CNNBENCH_AMX=0 hides this)")


if __name__ == "__main__":  # python -m cnnbench.kernels.amx: build and say whether it runs here
    print("AMX convolution:", "available" if available() else f"off ({reason})", file=sys.stderr)
