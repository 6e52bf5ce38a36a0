"""`cnnbench train` and `cnnbench finetune`: one run directory each, with a progress bar."""

from __future__ import annotations

import dataclasses

import click

from cnnbench.errors import UsageError
from cnnbench.commands.common import MODEL_PARALLEL_HELP, PRETRAINED_HELP, parse_options, pretrained_run
from cnnbench.runs.config import LR_SCALE_RULES, OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES
from cnnbench.output import Column, emit, format_option


# --------------------------------------------------------------------------- train

def _default(name: str, text: str = "") -> str:
    """An option's help with TrainConfig's default for it, which an experiment file's value
    replaces (the options themselves default to "not given", so that the file can)."""
    from cnnbench.runs.config import TrainConfig

    value = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    shown = str(value).lower() if isinstance(value, bool) else value
    return f"{text + ' ' if text else ''}[default: {shown}]"


@click.command()
@click.argument("arch", required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Experiment file (TOML).")
@click.option("--dataset", help="Dataset (default: digits, offline).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="TFDS data directory.")
@click.option("--manual-dir", type=click.Path(file_okay=False), help="Manually downloaded archives (ImageNet).")
@click.option("--epochs", type=int, help=_default("epochs"))
@click.option("--batch-size", type=int, help=_default("batch_size", "Global batch size (over all devices and hosts)."))
@click.option("--lr", type=float, help=_default("lr", "Peak learning rate."))
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=_default("optimizer"))
@click.option("--momentum", type=float, help=_default("momentum"))
@click.option("--nesterov/--no-nesterov", default=None, help=_default("nesterov"))
@click.option("--weight-decay", type=float, help=_default("weight_decay", "L2 on weights."))
@click.option("--schedule", type=click.Choice(SCHEDULES), help=_default("schedule"))
@click.option("--warmup-epochs", type=float, help=_default("warmup_epochs"))
@click.option("--label-smoothing", type=float, help=_default("label_smoothing"))
@click.option("--lr-scale-rule", type=click.Choice(LR_SCALE_RULES),
              help=_default("lr_scale_rule", "linear: the peak learning rate is --lr x batch size / 256."))
@click.option("--layer-decay", type=float, metavar="DECAY",
              help="Layer-wise learning-rate decay: the k-th weight layer from the output trains at lr x DECAY^k "
                   "(batch norms with the layer before them). [default: none]")
@click.option("--accumulate", type=int, metavar="N",
              help=_default("accumulate", "Gradient accumulation: each batch runs as N micro-batches, one after "
                                          "the other (1/N of the activation memory), with the update of the whole "
                                          "batch."))
@click.option("--ema", type=float, metavar="DECAY",
              help="Average the weights after every step (Polyak / EMA, e.g. 0.9999): validated and kept "
                   "beside the raw ones; eval and predict use them. [default: none]")
@click.option("--grad-clip", type=float, help="Clip the global gradient norm. [default: none]")
@click.option("--input-size", type=int)
@click.option("--train-ops", help="Train preprocessing recipe or spec (see `cnnbench data show`).")
@click.option("--eval-ops", help="Validation preprocessing recipe or spec.")
@click.option("--train-split")
@click.option("--eval-split")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Architecture option.")
@click.option("--precision", type=click.Choice(PRECISIONS), help=_default("precision"))
@click.option("--seed", type=int, help=_default("seed"))
@click.option("--devices", type=int, help="Use the first N devices (default: all).")
@click.option("--model-parallel", type=int, metavar="M", help=_default("model_parallel", MODEL_PARALLEL_HELP))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of an experiment file (TOML value), e.g. --set plateau_patience=3 "
                   "--set decay_epochs=[30,60] --set aux_weight=0.3 --set keep_checkpoints=5.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Run directory (default: runs/ARCH-DATASET-TIME); an existing one is resumed.")
@click.option("--resume", type=click.Path(file_okay=False, exists=True),
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--pretrained", metavar="NAME",
              help="Start from published ImageNet weights (a new head when the classes differ); ARCH "
                   "defaults to theirs. " + PRETRAINED_HELP)
@click.option("--coordinator", metavar="HOST:PORT", help="Multi-host: address of process 0.")
@click.option("--num-processes", type=int, help="Multi-host: number of processes.")
@click.option("--process-id", type=int, help="Multi-host: this process's index.")
@click.option("--init-timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="Multi-host: how long each process waits for the others at the coordinator.")
@format_option
def train(arch, config_file, options, settings, resume, run_dir, pretrained, coordinator, num_processes, process_id,
          init_timeout, fmt, **values):
    """Train ARCH (default dataset: the offline digits).

    \b
    Examples:
      cnnbench train lenet5
      cnnbench train alexnet --config experiments/alexnet_imagenet.toml --manual-dir ~/ILSVRC2012
      cnnbench train resnet20 --dataset cifar10 --epochs 2 --precision bf16
      cnnbench train alexnet --model-parallel 2 --input-size 67 --epochs 2
      cnnbench train resnet18 --pretrained resnet18 --dataset cifar10 --input-size 64
      cnnbench train --resume runs/lenet5-digits-20261122-031500
    """
    from pathlib import Path

    from cnnbench.runs import config as config_lib
    from cnnbench.train.loop import init_distributed, is_first_process
    from cnnbench.runs.layout import check_free

    init_distributed(coordinator, num_processes, process_id, init_timeout,  # before anything touches a device
                     run_dir=resume or run_dir)
    values.update(config_lib.settings(parse_options(settings, what="--set")))
    if options:
        values["arch_options"] = parse_options(options)
    if pretrained:
        if resume:
            raise UsageError("--pretrained starts a run; --resume continues one: give one of them")
        arch = config_lib.start_from(Path(pretrained_run(pretrained, fmt)["run_dir"]), arch, values)
    target = Path(resume or run_dir) if (resume or run_dir) else None
    if target is not None and is_first_process():
        check_free(target)  # a second writer hears who holds the run first (process 0 writes it)
    if resume:
        config_lib.from_run(target)  # --resume names a run: one line if it is none
    cfg = config_lib.requested(target, arch, config_file, values)
    if target is not None:
        config_lib.check_continues(target, cfg)  # before anything loads
    summary = _train_with_progress(cfg, target, fmt)
    rows = [{"run": summary["run_dir"], "epochs": summary["epochs"], **{f"final_{k}": v for k, v in summary["final"].items()},
             "ema_top1": summary.get("final_ema", {}).get("top1"),
             "best_top1": summary["best"].get("top1"), "best_epoch": summary["best"].get("epoch"),
             "images_per_sec": summary["images_per_sec"], "wall_time": summary["wall_time"]}]
    pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    emit(rows, [Column("run", "run", justify="left"), Column("epochs", "epochs"),
                Column("final_top1", "val top-1", pct), Column("final_top5", "val top-5", pct),
                Column("final_loss", "val loss", lambda v: f"{v:.4f}"),
                *([Column("ema_top1", "EMA val top-1", pct)] if "final_ema" in summary else []),
                Column("best_top1", "best top-1", pct), Column("best_epoch", "at epoch"),
                Column("images_per_sec", "train images/s", lambda v: f"{v:,.0f}"),
                Column("wall_time", "wall time", lambda v: f"{v:.0f} s")], fmt,
         title=f"{cfg.arch} on {summary['dataset']}", document=summary)


def _train_with_progress(cfg, run_dir, fmt):
    from cnnbench.progress import Bar
    from cnnbench.train.loop import train as run_training

    with Bar(transient=False, disable=fmt == "json") as bar:
        return run_training(cfg, run_dir=run_dir, progress=bar)


# --------------------------------------------------------------------------- transfer learning

@click.command()
@click.argument("source", type=click.Path(file_okay=False), required=False)
@click.option("--pretrained", metavar="NAME", help="Instead of SOURCE: " + PRETRAINED_HELP)
@click.option("--dataset", required=True, help="The new task's dataset (e.g. cifar10, folder:PATH).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="frozen-base",
              show_default=True, help="Train everything, some layers, or only the head.")
@click.option("--trainable", help="With --strategy partial: layers that train, e.g. conv5,fc6,fc7,head or 'last 3'.")
@click.option("--lr-mult", "lr_mults", multiple=True, metavar="LAYER=X",
              help="Learning-rate multiplier of a layer (e.g. --lr-mult head=10).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--manual-dir", type=click.Path(file_okay=False))
@click.option("--epochs", type=int, help="Default 10.")
@click.option("--batch-size", type=int, help="Default: the source run's.")
@click.option("--lr", type=float, help="Default 0.01.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS))
@click.option("--schedule", type=click.Choice(SCHEDULES))
@click.option("--weight-decay", type=float)
@click.option("--input-size", type=int, help="Default: the source run's.")
@click.option("--train-ops")
@click.option("--eval-ops")
@click.option("--train-split")
@click.option("--eval-split")
@click.option("--precision", type=click.Choice(PRECISIONS))
@click.option("--seed", type=int)
@click.option("--devices", type=int)
@click.option("--model-parallel", type=int, metavar="M", help=MODEL_PARALLEL_HELP + " [default: 1]")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Default: runs/ARCH-DATASET-TIME.")
@format_option
def finetune(source, pretrained, dataset, strategy, trainable, lr_mults, run_dir, fmt, **values):
    """Fine-tune the network in SOURCE (a run or imported weights) or published --pretrained weights
    on another dataset.

    A new head is made when the class count differs; frozen layers get no updates, no optimiser
    state, and keep their batch-norm statistics. Writes a normal run directory.

    \b
    Examples:
      cnnbench finetune runs/lenet5-digits-... --dataset folder:letters --strategy frozen-base
      cnnbench finetune weights/alexnet-owt --dataset caltech101 --strategy partial --trainable conv5,head
      cnnbench finetune weights/resnet50 --dataset oxford_flowers102 --strategy all --lr-mult head=10
      cnnbench finetune --pretrained resnet50 --dataset oxford_flowers102 --strategy frozen-base
    """
    from pathlib import Path

    from cnnbench.transfer.finetune import finetune_config

    if bool(source) == bool(pretrained):
        raise UsageError("give SOURCE (a run directory) or --pretrained NAME" + (", not both" if source else ""))
    if pretrained:
        source = pretrained_run(pretrained, fmt)["run_dir"]

    multipliers = parse_options(lr_mults, what="--lr-mult", numbers=True)
    cfg = finetune_config(Path(source), dataset=dataset, strategy=strategy, trainable=trainable,
                          lr_multipliers=multipliers, overrides=values)
    summary = _train_with_progress(cfg, Path(run_dir) if run_dir else None, fmt)
    transfer = summary.get("transfer", {})
    notes = [f"strategy {strategy}: {transfer.get('trainable_params', 0):,} parameters train, "
             f"{transfer.get('frozen_params', 0):,} frozen"]
    if transfer.get("fresh"):
        notes.append(f"new (not from {source}): {', '.join(transfer['fresh'])}")
    pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    emit([{"run": summary["run_dir"], "epochs": summary["epochs"], **{f"final_{k}": v for k, v in summary["final"].items()},
           "best_top1": summary["best"].get("top1"), "wall_time": summary["wall_time"]}],
         [Column("run", "run", justify="left"), Column("epochs", "epochs"),
          Column("final_top1", "val top-1", pct), Column("final_top5", "val top-5", pct),
          Column("best_top1", "best top-1", pct), Column("wall_time", "wall time", lambda v: f"{v:.0f} s")], fmt,
         title=f"{cfg.arch} fine-tuned on {summary['dataset']}", notes=notes, document=summary)
