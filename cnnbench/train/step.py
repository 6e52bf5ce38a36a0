"""The pure, jitted train and eval steps.

State is a plain dict ``{"step", "params", "batch_stats", "opt_state"}`` placed on the mesh as the
model's split says (:mod:`cnnbench.parallel`: replicated, or split over the ``model`` axis);
batches are sharded on the ``data`` axis, so batch-norm statistics and the loss are computed over
the global batch (XLA inserts the collectives). Dropout keys are ``fold_in(seed, step)``: a run is
a pure function of its seed, resumed or not.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cnnbench.kernels import amx, fastops
from cnnbench.kernels.flags import step_options
from cnnbench.kernels.products import cpu_has_bf16
from cnnbench.parallel.mesh import place, replicated, shardings
from cnnbench.pipeline.preprocess import Finish


def set_compute_dtype(model: nnx.Module, dtype) -> None:
    """bf16 mixed precision: layers compute in ``dtype``; parameters and optimiser state stay fp32."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (nnx.Conv, nnx.Linear, nnx.BatchNorm)):
            module.dtype = dtype


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a ``--precision`` computes on a platform: the dtype the layers (and the images) compute
    in, the dtype of the matrix products' operands in float32 layers (for
    :func:`cnnbench.kernels.fastops.within`; None: their own), and a one-line note for the user."""

    compute: object = jnp.float32
    products: str | None = None
    note: str | None = None

    def apply(self, model: nnx.Module) -> None:
        if self.compute != jnp.float32:
            set_compute_dtype(model, self.compute)

    def step(self, fn):
        """A step function that computes this way (its products' operands), jitted like any other."""
        return fastops.within(fn, products=self.products)

    def prepare_inference(self, model: nnx.Module) -> None:
        """The inference model's weights stored as its products read them, once, not on every call:
        with low-precision products (bf16 on a CPU) each dense layer's kernel is rounded to bf16
        here, the very values :func:`cnnbench.kernels.products.to_products` would round it to in
        every forward pass (the outputs are bit-identical). The kernel of alexnet-owt's fc6 alone
        is 151 MB in float32, read and rounded on every batch otherwise: bf16 inference at batch 32
        on an Intel Xeon with AMX, in one process, alexnet-owt 142 -> 118 ms per batch, vgg11 778 ->
        750 (fastest steps), the ResNets and googlenet-bn level (BENCHMARKS.md, issue 26).
        So is the kernel of a convolution whose forward pass is products of it
        (:func:`cnnbench.kernels.fastops.forward_form` "matmul": strided 1x1 layers; 1x1 and
        strided 3x3 ones without AMX), the same values (bf16 inference at batch 32: resnet50, googlenet-bn and
        resnet18 level, 1.005-1.019x; XLA had kept most of those roundings out of the loop over
        pieces of the batch already). Other convolution kernels stay float32
        (Winograd's transform of a rounded kernel would round twice), but where a layer's forward
        pass runs on the AMX kernel ("amx") its kernel is also packed as the AMX kernel reads it
        (:class:`cnnbench.archs.layers.Packed`), the same values: re-packing every kernel took 17
        of the 140 ms of resnet18's bf16 inference at batch 32 on one device (profile;
        BENCHMARKS.md, issue 26). Call it before :func:`cnnbench.parallel.plan` splits the model:
        a layer split over devices keeps its kernel."""
        if self.products is None:
            return
        from cnnbench.archs.layers import Conv, Packed
        from cnnbench.kernels import choice

        low = jnp.dtype(self.products)
        with choice.use(None, products=self.products):  # the forms the program will take
            for _, module in nnx.iter_modules(model):
                if isinstance(module, nnx.Linear) and module.dtype is None and module.kernel[...].dtype == jnp.float32:
                    module.kernel.set_value(module.kernel[...].astype(low))
                elif isinstance(module, Conv) and module.groups == 1 and module.dtype is None and module.partition is None:
                    form = fastops.forward_form(module.k, module.s, module.in_features, module.out_features,
                                                module.padding)
                    if form == "amx":
                        module.packed = Packed(amx.pack(jnp.asarray(module.kernel[...])))
                    elif form == "matmul" and module.kernel[...].dtype == jnp.float32:
                        module.kernel.set_value(module.kernel[...].astype(low))


def precision_plan(precision: str, platform: str, bf16_units: bool | None = None) -> Precision:
    """``fp32``: float32 throughout. ``fp16``: layers in float16 (the loop adds dynamic loss
    scaling). ``bf16`` on an accelerator: layers in bf16, parameters and optimiser state float32.

    ``bf16`` on a CPU: XLA:CPU's element-wise bf16 arithmetic runs slower than float32's, and its
    products reach the CPU's bf16 instructions (AVX512-BF16, AMX) only when they sum in float32. So
    the layers stay float32 and only the products of the convolutions and dense layers take bf16
    operands summed in float32 (:mod:`cnnbench.kernels.products`), as PyTorch's CPU autocast does:
    on a 2-core AMD EPYC (Zen 4) with AVX512-BF16, 1.1-1.3x the float32 step. On a CPU with AMX the
    convolutions run on cnnbench's AMX kernels (:mod:`cnnbench.kernels.amx`; the note says so if
    they cannot). A CPU
    without bf16 instructions (``bf16_units``; default: read from the CPU's flags) would emulate
    them, slower than float32: there it computes in float32 and says so."""
    if precision == "fp16":
        return Precision(jnp.float16)
    if precision != "bf16":
        return Precision()
    if platform != "cpu":
        return Precision(jnp.bfloat16)
    if bf16_units is None:
        bf16_units = cpu_has_bf16()
    if bf16_units:
        return Precision(products="bfloat16", note=amx.off_note())
    return Precision(note="--precision bf16: this CPU has no bf16 instructions (avx512_bf16, amx_bf16), where "
                          "bf16 products run slower than float32; computing in float32 instead")


def inference_program(model: nnx.Module, mesh=None, precision: str = "fp32",
                      input_shape: tuple[int, ...] | None = None) -> tuple[nnx.Module, Precision]:
    """What every inference command runs, for ``model`` on ``mesh`` (None: JAX's default device)
    computing in ``precision``: the inference model (:func:`cnnbench.archs.inference.inference_model`,
    ``input_shape`` as it says) with its weights stored as the precision's products read them
    (:meth:`Precision.prepare_inference`), in the precision's compute dtype, split over the mesh
    (:func:`cnnbench.parallel.plan`). Returns it (a copy: ``model`` is left as it is) and the
    :class:`Precision` (its ``step`` is how the program is traced; ``note`` what to tell the user)."""
    from cnnbench import parallel
    from cnnbench.archs.inference import inference_model

    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    ways, devices = (1, 1) if mesh is None else (parallel.model_size(mesh), parallel.data_size(mesh))
    plan = precision_plan(precision, platform)
    model, _ = inference_model(model, input_shape, platform=platform, ways=ways, devices=devices)
    plan.prepare_inference(model)
    plan.apply(model)
    if mesh is not None:
        parallel.plan(model, ways, mesh)
    return model, plan


def _images(batch, finish: Finish | None, dtype):
    images = batch["image"] if finish is None else finish(batch["image"], batch["shift"], xp=jnp)
    return images.astype(dtype)


def _topk_correct(logits, labels, k):
    k = min(k, logits.shape[-1])
    return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


#: dynamic loss scaling for fp16 (as torch.cuda.amp.GradScaler): start, growth interval
LOSS_SCALE, GROWTH_INTERVAL = 2.0 ** 15, 2000


def train_state(model: nnx.Module, tx, mesh, *, ema: bool = False, loss_scale: bool = False):
    """``(graphdef, state, other)`` of a (planned) model: its graph, the training state
    ``{"step", "params", "batch_stats", "opt_state"}`` (and ``"ema"``, the averaged
    ``{"params", "batch_stats"}``, with ``ema``) placed on ``mesh`` as the layers' split says (the
    optimiser state like the parameters it belongs to), and the rest (dropout RNG state)
    replicated. What `cnnbench train` and `cnnbench bench` start from."""
    graphdef, params, batch_stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
             "opt_state": tx.init(params)}
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})
    if loss_scale:  # fp16: the loss scale, good steps since it last changed, steps skipped on overflow
        state["loss_scale"] = {"scale": jnp.float32(LOSS_SCALE), "good": jnp.int32(0), "skipped": jnp.int32(0)}
    return graphdef, place(state, mesh), jax.device_put(other, replicated(mesh))


def averaged(state: dict) -> dict:
    """``state`` with the averaged (EMA) weights in place of the raw ones, for the eval step."""
    return {**state, **state["ema"]}


def jit_train_step(train_step, state, mesh):
    """``train_step`` jitted as `cnnbench train` and `cnnbench bench` run it: the state donated
    (updated in place) and returned where it was (``state``'s shardings on ``mesh``), the metrics
    replicated, and XLA's options for training steps (:func:`cnnbench.kernels.flags.step_options`)."""
    return jax.jit(train_step, donate_argnums=0, out_shardings=(shardings(state, mesh), replicated(mesh)),
                   compiler_options=step_options() or None)


def probabilities(model: nnx.Module, images):
    """Softmax of ``model`` in inference mode, float32, for ``images`` of shape (B, [crops ...,] H, W, C),
    averaged over the crops of each image (10-crop, multi-scale): (B, classes)."""
    flat = images.reshape((-1,) + images.shape[-3:])
    probs = jax.nn.softmax(model(flat, train=False).astype(jnp.float32))
    return probs.reshape((images.shape[0], -1, probs.shape[-1])).mean(axis=1)


def mix_batch(images, labels, key, mixing: tuple):
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with its reverse, as timm
    pairs them: ``(images, partner labels, lam)``, the targets being ``lam * onehot(labels) +
    (1 - lam) * onehot(partner)``. ``mixing`` is ``(("mixup", alpha), ("cutmix", alpha))`` or one of
    them; with both, each batch uses one of the two, chosen with probability 1/2. For CutMix ``lam``
    is the share of the image's own pixels left after the box is pasted."""
    choose, k_mix, k_cut, k_box = jax.random.split(key, 4)
    other_images, partner = jnp.flip(images, 0), jnp.flip(labels, 0)
    results = []
    for name, alpha in mixing:
        if name == "mixup":
            lam = jax.random.beta(k_mix, alpha, alpha)
            results.append(((lam * images + (1 - lam) * other_images).astype(images.dtype), lam))
        else:
            h, w = images.shape[1:3]
            side = jnp.sqrt(1.0 - jax.random.beta(k_cut, alpha, alpha))
            cy, cx = jax.random.uniform(k_box, (2,)) * jnp.array([h, w])
            y0, y1 = jnp.clip(jnp.round(cy - side * h / 2), 0, h), jnp.clip(jnp.round(cy + side * h / 2), 0, h)
            x0, x1 = jnp.clip(jnp.round(cx - side * w / 2), 0, w), jnp.clip(jnp.round(cx + side * w / 2), 0, w)
            rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
            box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
            results.append((jnp.where(box[None, :, :, None], other_images, images),
                            1.0 - box.sum() / (h * w)))
    if len(results) == 1:
        return results[0][0], partner, results[0][1]
    first = jax.random.bernoulli(choose)
    return jnp.where(first, results[0][0], results[1][0]), partner, jnp.where(first, results[0][1], results[1][1])


def make_steps(graphdef, other, tx, *, seed: int, finish: Finish | None, dtype=jnp.float32,
               label_smoothing: float = 0.0, aux_weight: float = 0.3, eval_finish: Finish | None = None,
               ema_decay: float | None = None, accumulate: int = 1, mixing: tuple = ()):
    """(train_step, eval_step); ``finish`` completes training batches, ``eval_finish`` (default: the
    same) evaluation batches. A state with ``"ema"`` averages the weights after every step:
    ``ema = decay * ema + (1 - decay) * new`` (Polyak averaging; batch-norm statistics too).
    ``accumulate`` N splits each batch into N micro-batches run one after the other (activations
    of one micro-batch in memory at a time) and applies the mean of their gradients: the update
    of the whole batch, up to float rounding (batch norm sees micro-batches, dropout other keys).
    ``mixing`` (:func:`mix_batch`) mixes each training batch and its targets; the training top-1
    then counts the label with the larger share."""
    base_key = jax.random.key(seed)
    eval_finish = finish if eval_finish is None else eval_finish

    def merge(params, batch_stats):
        # ``other`` (the dropout RNG state) is closed over; copying it here makes fresh Variables
        # inside the trace, which ``nnx.reseed`` may then overwrite.
        return nnx.merge(graphdef, params, batch_stats, jax.tree.map(lambda v: v, other))

    def gradients(params, batch_stats, images, labels, key, partner=None, lam=1.0, scale=None):
        """Loss, metrics, gradients and updated batch statistics of one (micro-)batch; with a
        ``partner`` the targets are ``lam`` of the labels and ``1 - lam`` of the partner's."""
        model = merge(params, batch_stats)
        nnx.reseed(model, default=key)

        def loss_fn(m):
            logits, aux = m.forward_with_aux(images, train=True)

            def ce(z):
                z = z.astype(jnp.float32)
                targets = jax.nn.one_hot(labels, z.shape[-1])
                if partner is not None:
                    targets = lam * targets + (1 - lam) * jax.nn.one_hot(partner, z.shape[-1])
                if label_smoothing:
                    targets = optax.smooth_labels(targets, label_smoothing)
                return optax.softmax_cross_entropy(z, targets).mean()

            loss = ce(logits) + aux_weight * sum(ce(a) for a in aux)
            return loss * (1.0 if scale is None else scale), (loss, logits.astype(jnp.float32))

        (_, (loss, logits)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        shown = labels if partner is None else jnp.where(lam >= 0.5, labels, partner)
        metrics = {"loss": loss, "top1": _topk_correct(logits, shown, 1).mean(),
                   "top5": _topk_correct(logits, shown, 5).mean()}
        return metrics, grads, nnx.state(model, nnx.BatchStat)

    def accumulated(state, images, labels, key, partner=None, lam=1.0, scale=None):
        """The mean gradient of ``accumulate`` micro-batches: example j of micro-batch i is example
        j * N + i of the batch, so every device's shard of the batch feeds every micro-batch."""
        def micro(x):
            return jnp.moveaxis(x.reshape((x.shape[0] // accumulate, accumulate) + x.shape[1:]), 1, 0)

        def body(carry, xs):  # (the parameters ride in the carry: NNX variables stay in the scan's trace)
            params, batch_stats, sums = carry
            i, x, y, p = xs
            metrics, grads, batch_stats = gradients(params, batch_stats, x, y, jax.random.fold_in(key, i),
                                                    None if partner is None else p, lam, scale)
            return (params, batch_stats, jax.tree.map(jnp.add, sums, (metrics, grads))), None

        zero = jax.tree.map(jnp.zeros_like, ({"loss": 0.0, "top1": 0.0, "top5": 0.0}, state["params"]))
        partners = micro(labels if partner is None else partner)
        (_, batch_stats, (metrics, grads)), _ = jax.lax.scan(
            body, (state["params"], state["batch_stats"], zero),
            (jnp.arange(accumulate), micro(images), micro(labels), partners))
        return jax.tree.map(lambda v: v / accumulate, metrics), jax.tree.map(lambda g: g / accumulate, grads), \
            batch_stats

    def train_step(state, batch):
        images, labels = _images(batch, finish, dtype), batch["label"]
        key = jax.random.fold_in(base_key, state["step"])
        partner, lam = None, 1.0
        if mixing:  # (its own key: dropout's keys are fold_in(key, micro-batch index))
            images, partner, lam = mix_batch(images, labels, jax.random.fold_in(key, 0x6D6978), mixing)
        scale = state["loss_scale"]["scale"] if "loss_scale" in state else None
        if accumulate > 1:
            metrics, grads, batch_stats = accumulated(state, images, labels, key, partner, lam, scale)
        else:
            metrics, grads, batch_stats = gradients(state["params"], state["batch_stats"], images, labels, key,
                                                    partner, lam, scale)
        if scale is not None:
            grads = jax.tree.map(lambda g: (g / scale).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats, "opt_state": opt_state}
        if scale is not None:
            new, metrics = _loss_scaling(state, new, grads, metrics)
        if "ema" in state:
            d = jnp.float32(ema_decay)
            new["ema"] = jax.tree.map(lambda e, w: (d * e + (1 - d) * w).astype(e.dtype), state["ema"],
                                      {"params": params, "batch_stats": batch_stats})
        return new, metrics

    def _loss_scaling(state, new, grads, metrics):
        """fp16's dynamic loss scaling: a step whose gradients overflowed keeps the old parameters,
        optimiser state and statistics, halves the scale and counts as skipped (its loss is left out
        of the metrics); after ``GROWTH_INTERVAL`` good steps in a row the scale doubles."""
        ls = state["loss_scale"]
        finite = jnp.all(jnp.array([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
        keep = {k: state[k] for k in ("params", "batch_stats", "opt_state")}
        new = {**new, **jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                                     {k: new[k] for k in keep}, keep)}
        good = jnp.where(finite, ls["good"] + 1, 0)
        grow = good >= GROWTH_INTERVAL
        new["loss_scale"] = {"scale": jnp.where(finite, jnp.where(grow, ls["scale"] * 2, ls["scale"]), ls["scale"] / 2),
                             "good": jnp.where(grow, 0, good), "skipped": ls["skipped"] + (~finite).astype(jnp.int32)}
        metrics = {**{k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}, "skipped": (~finite).astype(jnp.float32),
                   "loss_scale": ls["scale"]}
        return new, metrics

    def eval_step(state, batch):
        """Sums over the real (unpadded) examples; several crops per image average their softmax."""
        images, labels, mask = _images(batch, eval_finish, dtype), batch["label"], batch["mask"]
        probs = probabilities(merge(state["params"], state["batch_stats"]), images)
        nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0] + 1e-12)
        return {"loss": (nll * mask).sum(), "top1": (_topk_correct(probs, labels, 1) * mask).sum(),
                "top5": (_topk_correct(probs, labels, 5) * mask).sum(), "count": mask.sum()}

    return train_step, eval_step
