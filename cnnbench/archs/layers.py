"""The building blocks every architecture is made of (NHWC, channels last).

Every layer is called as ``layer(x, train=False)`` so containers can pass the flag down blindly,
and every layer reports itself to :mod:`cnnbench.archs.trace` so that `cnnbench summary` derives
its per-layer table from the model itself. Conventions follow PyTorch where the papers are
ambiguous (symmetric integer padding, ``ceil_mode`` pooling, average pooling that counts explicit
padding), because the published parameter and multiply-add counts are torchvision's.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from cnnbench.archs import initializers as init
from cnnbench.archs import trace
from cnnbench.kernels import fastops, products

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    # LeCun et al. 1998, appendix A: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3, so f(1) = 1
    "lecun_tanh": lambda x: 1.7159 * jnp.tanh(x * (2.0 / 3.0)),
}


def uniform_fan_in(scale: float):
    """Uniform on [-scale / F, scale / F], F the fan-in of the unit (LeCun et al. 1998, appendix A)."""
    def initializer(key, shape, dtype=jnp.float32):
        fan_in = int(np.prod(shape[:-1]))
        return jax.random.uniform(key, shape, dtype, -scale / fan_in, scale / fan_in)

    return initializer


def normal(std: float):
    """Untruncated N(0, std^2), as the AlexNet and VGG papers (and torchvision's ``normal_``) use."""
    return init.normal(stddev=std)


#: torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for VGG and ResNet convs.
he_fan_out = init.variance_scaling(2.0, "fan_out", "normal")


class Conv(nnx.Conv):
    """2-D convolution with PyTorch-style symmetric integer padding and channel groups."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 padding: int = 0, *, groups: int = 1, bias: bool = True,
                 kernel_init=init.lecun_normal(), bias_init=init.zeros, rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, (kernel, kernel), strides=stride,
                         padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                         use_bias=bias, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs,
                         conv_general_dilated=fastops.conv_general_dilated)
        self.k, self.s, self.p, self.groups = kernel, stride, padding, groups
        #: its split over a mesh's ``model`` axis (:func:`cnnbench.parallel.plan`); None: whole
        self.partition = None
        #: the kernel packed once for the AMX forward pass (:class:`Packed`; the inference program
        #: with bf16 products: :meth:`cnnbench.train.step.Precision.prepare_inference`); None: not
        self.packed = nnx.data(None)

    def __call__(self, x, train: bool = False):
        if self._runs_packed(x):
            def whole(x):
                return self._packed(x, self.packed[...], None if self.bias is None else self.bias[...])

            y = whole(x) if self.partition is None else self.partition.run(self._packed, whole, x, self.packed,
                                                                            self.bias)
        elif self.partition is None:
            y = super().__call__(x)
        else:
            y = self.partition.run(self._on_device, super().__call__, x, self.kernel, self.bias)
        per_output = self.k * self.k * self.in_features // self.groups
        trace.record(self, x, y, kind="conv", kernel=self.k, stride=self.s, padding=self.p,
                     macs=np.prod(y.shape[1:]) * per_output)
        return y

    def _on_device(self, x, kernel, bias):
        """This layer on the arrays one device holds (:mod:`cnnbench.parallel.partition`): a
        tower's group or some output channels (a plain convolution), or, not split, the layer."""
        groups = self.groups if self.partition.kind == "whole" else 1
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = self.conv_general_dilated(x, kernel, (self.s, self.s), ((self.p, self.p), (self.p, self.p)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
        return y if bias is None else y + bias

    def _runs_packed(self, x) -> bool:
        """Whether this call takes :attr:`packed`: the layer whole on each device, float32, and the
        forward pass one the AMX kernel computes from the kernel as it is, under the choice in
        force (else the kernel, as always)."""
        return (self.packed is not None and self.groups == 1 and self.dtype is None and x.dtype == jnp.float32
                and (self.partition is None or self.partition.kind == "whole")
                and fastops.forward_form(self.k, self.s, self.in_features, self.out_features, self.padding) == "amx")

    def _packed(self, x, packed, bias):
        """:meth:`_on_device` with the kernel packed."""
        y = fastops.packed_conv(x, packed, self.s, self.padding, self.out_features)
        return y if bias is None else y + bias


class Packed(nnx.Variable):
    """A weight stored as a kernel reads it (not trained, not saved): an inference program's own."""


class Dense(nnx.Linear):
    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 kernel_init=init.lecun_normal(), bias_init=init.zeros, rngs: nnx.Rngs):
        super().__init__(in_features, out_features, use_bias=bias, kernel_init=kernel_init,
                         bias_init=bias_init, rngs=rngs, dot_general=products.dot_general)
        self.partition = None  # as Conv's
        #: the kernel stored [out, in] (the inference model's layout: :func:`cnnbench.archs.inference.transpose_dense`)
        self.transposed = False

    def __call__(self, x, train: bool = False):
        if self.partition is None:
            y = self._whole(x)
        else:
            y = self.partition.run(self._product, self._whole, x, self.kernel, self.bias)
        trace.record(self, x, y, kind="dense", macs=self.in_features * self.out_features)
        return y

    def kernel_in_out(self):
        """The kernel as ``[in, out]``, however it is stored."""
        kernel = self.kernel[...]
        return kernel.T if self.transposed else kernel

    def _whole(self, x):
        """The layer as on one device, its whole kernel (what a split layer computes without a mesh)."""
        return self._product(x, self.kernel[...], None if self.bias is None else self.bias[...])

    def _product(self, x, kernel, bias):
        """``x @ kernel + bias`` on the arrays one device holds."""
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        if self.transposed:
            y = products.dense_out_in(x, kernel)
        else:
            y = self.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        return y if bias is None else y + bias


class BatchNorm(nnx.BatchNorm):
    """Batch norm with PyTorch's hyper-parameter conventions (``momentum=0.1`` means 0.9 decay)."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 scale_init=init.ones, rngs: nnx.Rngs | None = None):
        # Batch norm draws no random numbers; Flax only asks for ``rngs`` by convention.
        super().__init__(num_features, epsilon=eps, momentum=1.0 - momentum, scale_init=scale_init,
                         rngs=rngs if rngs is not None else nnx.Rngs(0))

    def __call__(self, x, train: bool = False):
        # A frozen layer (transfer learning) normalises with, and keeps, its running statistics.
        use_running = not train or getattr(self, "frozen", False)
        if fastops.enabled("batchnorm"):
            y = self._normalise(x, use_running)
        else:  # Flax's own formulation (CNNBENCH_FASTOPS without "batchnorm")
            y = super().__call__(x, use_running_average=use_running)
        trace.record(self, x, y, kind="batchnorm")
        return y

    def _normalise(self, x, use_running: bool):
        """Flax's batch norm (the same statistics, running averages and result up to float
        rounding), normalising as one multiply-add per value, ``x * a + b`` with per-channel
        ``a = scale / sqrt(var + eps)`` and ``b = bias - mean * a``, as PyTorch's CPU kernel does.
        Flax's ``(x - mean) * a + bias`` makes XLA keep ``x - mean`` as one more full-size array
        for the backward pass. Without it, XLA's compiled resnet18 / resnet50 training steps move
        14% fewer bytes and need 23% / 32% less temporary memory (BENCHMARKS.md, issue 6's
        fourteenth session). Statistics and arithmetic are float32 at least (bf16 layers too);
        the result has the layer's dtype."""
        out_dtype = self.dtype or jnp.result_type(x, *(v[...] for v in (self.scale, self.bias) if v is not None))
        dtype = jnp.promote_types(out_dtype, jnp.float32)
        xf = x.astype(dtype)
        if use_running:
            mean, var = self.mean[...].astype(dtype), self.var[...].astype(dtype)
        else:
            axes = tuple(range(x.ndim - 1))
            mean = xf.mean(axes)
            var = jnp.maximum(0.0, jnp.square(xf).mean(axes) - jnp.square(mean))  # Flax's fast variance
            decay = self.momentum
            self.mean[...] = lax.stop_gradient(decay * self.mean[...] + (1 - decay) * mean)
            self.var[...] = lax.stop_gradient(decay * self.var[...] + (1 - decay) * var)
        a = lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            a = a * self.scale[...].astype(dtype)
        b = -mean * a
        if self.bias is not None:
            b = b + self.bias[...].astype(dtype)
        return (xf * a + b).astype(out_dtype)


class Dropout(nnx.Dropout):
    """Flax's dropout, the same mask for the same key, with the mask kept as a buffer of ``x``'s
    dtype (1 kept, 0 dropped) instead of a recipe. Flax's form leaves XLA free to fuse the mask's
    random bits into every consumer, and it does: AlexNet's pool5 -> dropout -> fc6 backward ran
    at 13 ms with the bits recomputed inside the pooling gradient, 2-3 ms from a buffer
    (BENCHMARKS.md, issue 6). The mask is made by :func:`fastops.materialised`, inside a
    conditional that XLA keeps, so it is a buffer."""

    def __call__(self, x, train: bool = False, *, rngs=None):
        if not train or self.rate == 0.0:
            y = x
        elif self.rate == 1.0:
            y = jnp.zeros_like(x)
        else:
            keep_prob = 1.0 - self.rate
            shape = tuple(1 if d in self.broadcast_dims else n for d, n in enumerate(x.shape))
            scale = jnp.asarray(1.0 / keep_prob, x.dtype)
            key = self._key(rngs)
            mask = fastops.materialised(lambda key: jnp.where(jax.random.bernoulli(
                key, p=keep_prob, shape=shape, out_sharding=jax.typeof(x).sharding), scale, jnp.zeros((), x.dtype)),
                (key,), _always_true(key))
            y = x * mask  # a select on the mask was as slow in the pooling gradient as the recomputation
        trace.record(self, x, y, kind="dropout", params=0)
        return y

    def _key(self, rngs):
        """The key Flax's dropout would draw (``rngs`` given, else the layer's own stream)."""
        rngs = rngs if rngs is not None else self.rngs
        if rngs is None:
            raise ValueError("Dropout in training needs rngs, given to the layer or to the call")
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        return rngs() if isinstance(rngs, nnx.RngStream) else rngs


def _always_true(key):
    """True, from the key's data (bit 0 of ``k | 1`` for its first word): a value XLA cannot fold."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)  # else a raw uint32 key (jax.random.PRNGKey)
    word = (jax.random.key_data(key) if typed else key).reshape(-1)[0]
    return (word | 1) & 1 == 1


class Act(nnx.Module):
    """A named element-wise non-linearity (one of :data:`ACTIVATIONS`)."""

    def __init__(self, name: str = "relu"):
        if name not in ACTIVATIONS:
            from cnnbench.errors import UsageError

            raise UsageError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.fn = name

    def __call__(self, x, train: bool = False):
        y = ACTIVATIONS[self.fn](x)
        trace.record(self, x, y, kind="act", params=0)
        return y


def _window_bounds(n: int, k: int, s: int, p: int, ceil_mode: bool) -> tuple[int, int]:
    """(output size, extra right padding) of a pooling window, with PyTorch's ceil_mode rule."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # the last window must start inside the input
        out -= 1
    return out, max((out - 1) * s + k - (n + 2 * p), 0)


class _Pool(nnx.Module):
    kind = "pool"

    def __init__(self, kernel: int, stride: int | None = None, padding: int = 0, *,
                 ceil_mode: bool = False):
        self.k, self.s, self.p, self.ceil_mode = kernel, stride or kernel, padding, ceil_mode

    def _pads(self, x):
        return [(0, 0)] + [(self.p, self.p + _window_bounds(n, self.k, self.s, self.p, self.ceil_mode)[1])
                           for n in x.shape[1:3]] + [(0, 0)]

    def __call__(self, x, train: bool = False):
        y = self._pool(x)
        trace.record(self, x, y, kind=self.kind, kernel=self.k, stride=self.s, padding=self.p,
                     params=0)
        return y


class MaxPool(_Pool):
    kind = "maxpool"

    def _pool(self, x):
        return fastops.max_pool(x, self.k, self.s, self._pads(x))


class AvgPool(_Pool):
    """Average pooling; explicit padding counts in the divisor, the ceil_mode overhang does not."""

    kind = "avgpool"

    def _pool(self, x):
        total = lax.reduce_window(x, 0.0, lax.add, (1, self.k, self.k, 1), (1, self.s, self.s, 1),
                                  self._pads(x))
        counts = [self._counts(n, out) for n, out in zip(x.shape[1:3], total.shape[1:3])]
        return total / jnp.asarray(np.outer(*counts)[None, :, :, None], x.dtype)

    def _counts(self, n: int, out: int) -> np.ndarray:
        starts = np.arange(out) * self.s - self.p
        return np.minimum(starts + self.k, n + self.p) - starts


def _adaptive_matrix(n: int, out: int) -> np.ndarray:
    """PyTorch's adaptive pooling bins (floor start, ceil end) as an averaging matrix."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        start, end = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool(nnx.Module):
    """``nn.AdaptiveAvgPool2d(size)``: any input size to a fixed ``size x size`` map."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x, train: bool = False):
        h, w = x.shape[1:3]
        if (h, w) == (self.size, self.size):
            y, kernel, stride = x, 1, 1
        else:
            mh, mw = (jnp.asarray(_adaptive_matrix(n, self.size), x.dtype) for n in (h, w))
            y = jnp.einsum("ih,jw,nhwc->nijc", mh, mw, x)
            kernel = int((_adaptive_matrix(h, self.size) > 0).sum(1).max())
            stride = max(h // self.size, 1)
        trace.record(self, x, y, kind="avgpool", kernel=kernel, stride=stride, params=0)
        return y


class GlobalAvgPool(nnx.Module):
    """Mean over the spatial axes: NHWC -> NC (NiN's and GoogLeNet's global average pooling)."""

    def __call__(self, x, train: bool = False):
        y = jnp.mean(x, axis=(1, 2))
        trace.record(self, x, y, kind="gap", kernel=x.shape[1], stride=x.shape[1], params=0)
        return y


class Flatten(nnx.Module):
    def __call__(self, x, train: bool = False):
        y = x.reshape(x.shape[0], -1)
        whole_map = x.shape[1] if x.ndim == 4 else 1
        trace.record(self, x, y, kind="flatten", kernel=whole_map, stride=whole_map, params=0)
        return y


class LRN(nnx.Module):
    """Local response normalisation across channels, exactly as Krizhevsky et al. (2012) write it:

    ``b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta``

    Note that ``alpha`` multiplies the plain sum; PyTorch's ``LocalResponseNorm`` and Caffe divide
    it by ``n`` first, so their ``alpha`` is ``n`` times this one.

    ``groups`` > 1 normalises each group of channels on its own (the paper AlexNet's towers: each
    GPU normalised the kernel maps it held).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, *,
                 groups: int = 1):
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def __call__(self, x, train: bool = False):
        towers = x.reshape(*x.shape[:-1], self.groups, x.shape[-1] // self.groups)
        y = fastops.lrn(towers, self.size, self.alpha, self.beta, self.k).reshape(x.shape)
        trace.record(self, x, y, kind="lrn", params=0)
        return y


class ShortcutA(nnx.Module):
    """He et al.'s option A shortcut: subsample, then zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        self.extra, self.s = out_channels - in_channels, stride

    def __call__(self, x, train: bool = False):
        y = x[:, ::self.s, ::self.s, :]
        y = jnp.pad(y, [(0, 0), (0, 0), (0, 0), (self.extra // 2, self.extra - self.extra // 2)])
        trace.record(self, x, y, kind="shortcut", kernel=1, stride=self.s, params=0)
        return y


def add(*xs):
    """Element-wise sum of branches (residual connections)."""
    y = xs[0]
    for x in xs[1:]:
        y = y + x
    trace.merge(xs, y)
    return y


def concat(xs):
    """Channel concatenation of branches (Inception modules)."""
    y = jnp.concatenate(xs, axis=-1)
    trace.merge(xs, y)
    return y


class TableConv(nnx.Module):
    """A convolution whose output map ``j`` sees only the input maps ``table[j]`` (LeNet-5's C3):
    one kernel per connection, so the parameters are exactly the connections' (no masked zeros)."""

    def __init__(self, table, in_channels: int, kernel: int, *, kernel_init, rngs: nnx.Rngs):
        self.table = tuple(tuple(t) for t in table)
        self.k, self.in_channels, self.out_channels = kernel, in_channels, len(self.table)
        pairs = [(i, j) for j, inputs in enumerate(self.table) for i in inputs]
        self.pairs = tuple(pairs)  # (input map, output map) per connection, static
        # (k, k, 1, connections): initialised with the fan-in of the whole output unit
        fan = [kernel_init(rngs.params(), (kernel, kernel, len(self.table[j]), 1))[..., 0, 0] for _, j in pairs]
        self.kernel = nnx.Param(jnp.stack(fan, axis=-1))
        self.bias = nnx.Param(jnp.zeros((self.out_channels,), jnp.float32))

    def __call__(self, x, train: bool = False):
        i, j = np.array([p[0] for p in self.pairs]), np.array([p[1] for p in self.pairs])
        full = jnp.zeros((self.k, self.k, self.in_channels, self.out_channels), self.kernel[...].dtype)
        full = full.at[:, :, i, j].set(self.kernel[...])
        y = lax.conv_general_dilated(x, full.astype(x.dtype), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + self.bias[...].astype(x.dtype)
        macs = int(np.prod(y.shape[1:3])) * len(i) * self.k * self.k
        trace.record(self, x, y, kind="conv", kernel=self.k, stride=1, padding=0, macs=macs)
        return y


class Subsampling(nnx.Module):
    """LeNet-5's S2 / S4: each map's 2x2 sums times a trainable coefficient plus a trainable bias."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        bound = 2.4 / 4  # the initialisation rule of appendix A, fan-in 4
        self.coefficient = nnx.Param(jax.random.uniform(rngs.params(), (channels,), jnp.float32, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x, train: bool = False):
        sums = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        y = sums * self.coefficient[...].astype(x.dtype) + self.bias[...].astype(x.dtype)
        outputs = int(np.prod(y.shape[1:]))
        trace.record(self, x, y, kind="subsampling", kernel=2, stride=2, padding=0, connections=5 * outputs)
        return y


class Prototypes(nnx.Variable):
    """Fixed parameter vectors (not trained, not counted as parameters)."""


class EuclideanRBF(nnx.Module):
    """LeNet-5's output: y_i = sum_j (x_j - w_ij)^2 for fixed prototypes w (inputs x classes);
    returns -y as the logits, so the nearest prototype has the highest score."""

    def __init__(self, prototypes: np.ndarray):
        self.prototypes = Prototypes(jnp.asarray(prototypes, jnp.float32))

    def __call__(self, x, train: bool = False):
        w = self.prototypes[...].astype(x.dtype)
        distances = (x * x).sum(-1, keepdims=True) - 2 * x @ w + (w * w).sum(0)
        trace.record(self, x, distances, kind="rbf", params=0, connections=int(np.prod(w.shape)))
        return -distances


class Sequential(nnx.Module):
    """Named layers applied in order, like ``nn.Sequential(OrderedDict(...))``.

    Names become parameter paths (``features.conv1.kernel``) and the layer names users pass to
    `summary`, feature extraction and visualisation.
    """

    def __init__(self, *pairs: tuple[str, nnx.Module], **layers: nnx.Module):
        items = list(pairs) + list(layers.items())
        self.names = tuple(name for name, _ in items)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate layer names in {self.names}")
        for name, layer in items:
            setattr(self, name, layer)

    def named_layers(self):
        return [(name, getattr(self, name)) for name in self.names]

    def __getitem__(self, name: str):
        return getattr(self, name)

    def __len__(self):
        return len(self.names)

    def __call__(self, x, train: bool = False):
        for name in self.names:
            x = getattr(self, name)(x, train=train)
        return x
