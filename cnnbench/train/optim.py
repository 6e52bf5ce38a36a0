"""Optimisers and learning-rate schedules, all from optax.

The chain ends in an injected ``scale`` whose ``step_size`` the loop lowers by ``decay_factor``
when validation error plateaus (the AlexNet/VGG/ResNet recipe); it lives in the optimiser state,
so a resumed run keeps it.
"""

from __future__ import annotations

import jax
import optax

from cnnbench.runs.config import TrainConfig


def schedule(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    import dataclasses

    cfg = dataclasses.replace(cfg, lr=cfg.peak_lr, lr_scale_rule="none")  # (the linear scaling rule, applied)
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "step":
        base = optax.piecewise_constant_schedule(
            cfg.lr, {int(e * steps_per_epoch) - warmup: cfg.decay_factor for e in cfg.decay_epochs})
    elif cfg.schedule == "cosine":
        base = optax.cosine_decay_schedule(cfg.lr, decay_steps=max(total - warmup, 1))
    elif cfg.schedule == "exponential":
        base = optax.exponential_decay(cfg.lr, transition_steps=steps_per_epoch,
                                       decay_rate=cfg.decay_factor, staircase=True)
    else:  # constant, plateau
        base = optax.constant_schedule(cfg.lr)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), base], [warmup])
    return base


def _kernels(params):
    """Weight decay on weights only (kernels), not on biases or batch-norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _update_rule(cfg: TrainConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if cfg.weight_decay and cfg.optimizer != "adamw":
        # L2 regularisation as the papers apply it: wd * w added to the gradient, before momentum.
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_kernels))
    if cfg.optimizer == "sgd":
        parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.optimizer == "adam":
        parts.append(optax.adam(lr))
    else:
        parts.append(optax.adamw(lr, weight_decay=cfg.weight_decay, mask=_kernels))
    return optax.chain(*parts)


def optimizer(cfg: TrainConfig, steps_per_epoch: int, group=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The update rule; with ``group`` (see :func:`cnnbench.train.freeze.grouping`) frozen
    parameters get zero updates and no optimiser state, and each other group its own learning-rate
    multiplier."""
    lr = schedule(cfg, steps_per_epoch)
    parts = []
    if group is not None:  # frozen gradients out first, so they do not count in the clipping norm
        parts.append(optax.masked(optax.set_to_zero(), lambda p: jax.tree.map(lambda g: g == "frozen", group(p))))
    if cfg.grad_clip:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if group is None:
        parts.append(_update_rule(cfg, lr))
    else:
        def rule(name):
            if name == "frozen":
                return optax.set_to_zero()
            mult = float(name.removeprefix("lr*"))
            return _update_rule(cfg, lr if mult == 1.0 else (lambda step: lr(step) * mult))

        names = group.labels  # (the multipliers of --lr-mult and --layer-decay)
        parts.append(optax.multi_transform({n: rule(n) for n in names}, group))
    parts.append(optax.inject_hyperparams(optax.scale)(step_size=1.0))
    return optax.chain(*parts), lr


def plateau_scale(opt_state) -> float:
    return float(opt_state[-1].hyperparams["step_size"])


def set_plateau_scale(opt_state, value: float):
    """A new optimiser state whose final scale is ``value`` (sharding of the old one preserved)."""
    hyper = opt_state[-1].hyperparams
    old = hyper["step_size"]
    new = dict(hyper, step_size=jax.device_put(jax.numpy.asarray(value, old.dtype), old.sharding))
    return (*opt_state[:-1], opt_state[-1]._replace(hyperparams=new))
