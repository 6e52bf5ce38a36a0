"""The papers' findings, each as variants to train, budgets, and the test that gives its verdict.

Every budget is fixed here: the ``paper`` budget is the paper's own setup (the recipes of
``experiments/*.toml``); ``small`` runs on the offline digits in at most 15 minutes on a 2-core
CPU; ``smoke`` runs in about a minute, for tests. Seeds are 0..N-1. Nothing here is tuned on the
verdicts: where the offline data cannot show an effect, the report says so.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from cnnbench.errors import UsageError
from cnnbench.reproduce import figures
from cnnbench.reproduce.finding import (FINDINGS, Analysis, Budget, Finding, Runs, Variant, epochs_to, final_test_error,
                                        final_train_error, register)
from cnnbench.reproduce.verdict import all_of, below_all, exceeds, not_above, positive, stats

SGD = {"optimizer": "sgd", "momentum": 0.9}
#: the smoke budget's data: a quarter of the digits' training images, one epoch
SMOKE = {"epochs": 1, "train_split": "train[:256]", "batch_size": 32}
#: AlexNet's ILSVRC-2012 recipe (experiments/alexnet_imagenet.toml), the paper budget of the AlexNet findings
ALEXNET_ILSVRC = {**SGD, "epochs": 90, "batch_size": 128, "input_size": 227, "lr": 0.01, "weight_decay": 5e-4,
                  "schedule": "plateau", "plateau_patience": 3, "train_ops": "alexnet", "eval_ops": "center"}
DIGITS_NOTE = ("scikit-learn's 8x8 handwritten digits (1,437 training / 360 test images, offline) "
               "stand in for the paper's data")


def _error_analysis(runs: Runs, *, measure, unit: str, tests, title: str, paper: dict[str, float] | None,
                    paper_title: str, curves: bool = True, threshold: float | None = None) -> Analysis:
    """The common shape: one per-seed measure per variant, tests on them, curves and bars."""
    names = [v.name for v in runs.finding.variants]
    measured = {n: runs.per_seed(n, measure) for n in names}
    results = tests(measured)
    shown = {runs.finding_variant(n).title: measured[n] for n in names}
    figs = [figures.bars(shown, runs.out / "bars.png", unit=unit, title=title, dataset=runs.dataset,
                         paper=paper, paper_title=paper_title)]
    if curves:
        figs.insert(0, figures.curves(runs, names, runs.out / "curves.png", title=title, threshold=threshold))
    details = {"test_error": {n: runs.per_seed(n, final_test_error).to_json() for n in names}}
    return Analysis(measured, results, all_of(*results), unit, figs, details)


# --------------------------------------------------------------------------- He et al. 2016

def _degradation(runs: Runs) -> Analysis:
    return _error_analysis(
        runs, measure=final_train_error, unit="final training error %",
        tests=lambda m: [exceeds(m["plain-56"], m["plain-20"], what="plain-56 minus plain-20"),
                         not_above(m["resnet-56"], m["resnet-20"], what="resnet-56 minus resnet-20")],
        title="Deeper plain nets train worse; residual nets do not (He et al. 2016, Fig. 1 and 6)",
        paper={"ResNet-20 test": 8.75, "ResNet-56 test": 6.97},
        paper_title="the paper: CIFAR-10 test error % (Table 6)")


register(Finding(
    name="resnet-degradation",
    paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016",
    claim="A 56-layer plain network has a higher training error than a 20-layer one, while with "
          "residual connections the deeper network is not worse.",
    paper_numbers=({"what": "plain-56 vs plain-20 training error", "value": "higher throughout training",
                    "unit": "", "source": "Fig. 1 and Fig. 6 (left), curves only"},
                   {"what": "ResNet-20 test error", "value": 8.75, "unit": "%", "source": "Table 6"},
                   {"what": "ResNet-56 test error", "value": 6.97, "unit": "%", "source": "Table 6"}),
    metric="top-1 training error (%) over the last epoch's training batches, per seed",
    rule="plain-56's final training error exceeds plain-20's by more than 2 seed standard deviations, "
         "and resnet-56's does not exceed resnet-20's by more than 2",
    variants=(Variant("plain-20", "plain20"), Variant("plain-56", "plain56"),
              Variant("resnet-20", "resnet20"), Variant("resnet-56", "resnet56")),
    budgets={
        "smoke": Budget("digits", 1, {**SGD, **SMOKE, "input_size": 16, "lr": 0.1, "weight_decay": 1e-4}, 1.5,
                        DIGITS_NOTE + ", at 16x16"),
        "small": Budget("digits", 3, {**SGD, "epochs": 12, "batch_size": 64, "input_size": 16, "lr": 0.1,
                                      "weight_decay": 1e-4, "schedule": "step", "decay_epochs": [6, 9]}, 14,
                        DIGITS_NOTE + ", at 16x16 (the CIFAR networks' three stages at 16, 8 and 4); the "
                        "paper's schedule scaled down: lr 0.1 divided by 10 at 50% and 75% of 12 epochs"),
        "paper": Budget("cifar10", 5, {**SGD, "epochs": 164, "batch_size": 128, "input_size": 32, "lr": 0.1,
                                       "weight_decay": 1e-4, "schedule": "step", "decay_epochs": [82, 123],
                                       "train_ops": "cifar", "eval_ops": "small"}, None,
                        "the paper's recipe (experiments/resnet_cifar10_plain_vs_residual.toml)"),
    },
    analyse=_degradation,
))


# --------------------------------------------------------------------------- Lin et al. 2014

def _nin(runs: Runs) -> Analysis:
    return _error_analysis(
        runs, measure=final_test_error, unit="test error %",
        tests=lambda m: [exceeds(m["fc-dropout"], m["gap"], what="FC + dropout minus GAP"),
                         exceeds(m["fc"], m["gap"], what="FC minus GAP")],
        title="Global average pooling vs a fully connected head (Lin et al. 2014, Table 5)",
        paper={"mlpconv + FC": 11.59, "+ FC + dropout": 10.88, "+ GAP": 10.41},
        paper_title="the paper: CIFAR-10 test error % (Table 5)")


register(Finding(
    name="nin-gap-vs-fc",
    paper="Lin, Chen & Yan, Network In Network, ICLR 2014",
    claim="Global average pooling over the last mlpconv layer's maps gives a lower test error than a "
          "fully connected classifier, with or without dropout.",
    paper_numbers=({"what": "mlpconv + fully connected", "value": 11.59, "unit": "% test error", "source": "Table 5"},
                   {"what": "mlpconv + fully connected + dropout", "value": 10.88, "unit": "% test error",
                    "source": "Table 5"},
                   {"what": "mlpconv + global average pooling", "value": 10.41, "unit": "% test error",
                    "source": "Table 5"}),
    metric="top-1 test error (%) after the last epoch, per seed",
    rule="the test errors of FC + dropout and of FC each exceed GAP's by more than 2 seed standard deviations",
    variants=(Variant("gap", "nin-cifar", {"arch_options": {"head": "gap"}}, "mlpconv + GAP"),
              Variant("fc", "nin-cifar", {"arch_options": {"head": "fc", "head_dropout": 0.0}}, "mlpconv + FC"),
              Variant("fc-dropout", "nin-cifar", {"arch_options": {"head": "fc", "head_dropout": 0.5}},
                      "mlpconv + FC + dropout")),
    budgets={
        "smoke": Budget("digits", 1, {**SGD, **SMOKE, "input_size": 16, "lr": 0.01, "weight_decay": 1e-4}, 1,
                        DIGITS_NOTE + ", at 16x16"),
        "small": Budget("digits", 3, {**SGD, "epochs": 15, "batch_size": 64, "input_size": 16, "lr": 0.01,
                                      "weight_decay": 1e-4, "schedule": "step", "decay_epochs": [8, 12]}, 10,
                        DIGITS_NOTE + ", at 16x16; lr divided by 10 at about 50% and 75% of training as the "
                        "paper's solver"),
        "paper": Budget("cifar10", 3, {**SGD, "epochs": 120, "batch_size": 128, "input_size": 32, "lr": 0.1,
                                       "weight_decay": 1e-4, "schedule": "step", "decay_epochs": [60, 90],
                                       "warmup_epochs": 1, "train_ops": "cifar", "eval_ops": "small"}, None,
                        "the solver of experiments/nin_cifar10.toml and nin_cifar10_fc.toml"),
    },
    analyse=_nin,
))


# --------------------------------------------------------------------------- Krizhevsky et al. 2012

THRESHOLD = 25.0  # % training error, Figure 1
RATES = (0.01, 0.03, 0.1)


def _fastest(runs: Runs, activation: str, cap: float) -> tuple[str, dict]:
    """The learning rate at which ``activation`` reaches the threshold in the fewest epochs (mean
    over seeds; a run that never reaches it counts as the whole budget), as the paper chose."""
    table = {}
    for rate in RATES:
        name = f"{activation}-lr{rate:g}"
        table[name] = runs.per_seed(name, lambda r: min(epochs_to(r, THRESHOLD), cap))
    best = min(table, key=lambda n: (table[n].mean, n))
    return best, table


def _relu_tanh(runs: Runs) -> Analysis:
    cap = float(runs.budget.settings["epochs"])
    relu, relu_table = _fastest(runs, "relu", cap)
    tanh, tanh_table = _fastest(runs, "tanh", cap)
    measured = {f"ReLU (lr {relu.split('lr')[1]})": relu_table[relu],
                f"tanh (lr {tanh.split('lr')[1]})": tanh_table[tanh]}
    test = exceeds(tanh_table[tanh], relu_table[relu], what="tanh epochs minus ReLU epochs")
    ratio = tanh_table[tanh].mean / max(relu_table[relu].mean, 1e-9)
    figs = [figures.curves(runs, [relu, tanh], runs.out / "curves.png", threshold=THRESHOLD,
                           title="ReLU vs tanh: epochs to 25% training error (Krizhevsky et al. 2012, Fig. 1)"),
            figures.bars(measured, runs.out / "bars.png", unit=f"epochs to {THRESHOLD:g}% training error",
                         title="ReLU vs tanh", dataset=runs.dataset, paper={"ReLU": 1.0, "tanh": 6.0},
                         paper_title="the paper: CIFAR-10, relative epochs (about 6x)")]
    never = {n: sum(math.isinf(epochs_to(r, THRESHOLD)) for r in runs.records(n)) for n in relu_table | tanh_table}
    details = {"speedup": ratio, "learning_rates": {n: s.to_json() for n, s in (relu_table | tanh_table).items()},
               "runs_that_never_reached_the_threshold": {n: k for n, k in never.items() if k},
               "chosen": {"relu": relu, "tanh": tanh}}
    return Analysis(measured, [test], test.verdict, f"epochs to {THRESHOLD:g}% training error", figs, details)


register(Finding(
    name="relu-vs-tanh",
    paper="Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks, NIPS 2012",
    claim="A convolutional network with ReLUs reaches 25% training error several times faster (in epochs) "
          "than the same network with tanh units.",
    paper_numbers=({"what": "epochs to 25% training error, tanh / ReLU", "value": 6, "unit": "x",
                    "source": "Figure 1 (a four-layer CNN on CIFAR-10, no regularisation)"},),
    metric="epochs (at a tenth of an epoch's resolution) until the mean training error of a logged window "
           "is at most 25%, at each activation's fastest learning rate of 0.01, 0.03 and 0.1",
    rule="at each activation's fastest learning rate, tanh needs more epochs than ReLU by more than 2 seed "
         "standard deviations (a run that never reaches 25% counts as the whole budget)",
    variants=tuple(Variant(f"{act}-lr{rate:g}", "lenet5", {"lr": rate, "arch_options": {"activation": act}},
                           f"{'ReLU' if act == 'relu' else 'tanh'}, lr {rate:g}")
                   for act in ("relu", "tanh") for rate in RATES),
    budgets={
        "smoke": Budget("digits", 1, {**SGD, **SMOKE, "weight_decay": 0.0, "schedule": "constant",
                                      "train_ops": "small"}, 1, DIGITS_NOTE + "; LeNet-5 as the network"),
        "small": Budget("digits", 3, {**SGD, "epochs": 4, "batch_size": 64, "weight_decay": 0.0,
                                      "schedule": "constant", "train_ops": "small"}, 2,
                        DIGITS_NOTE + "; LeNet-5 (the paper's four-layer CIFAR network is not in the zoo), "
                        "no weight decay and no augmentation, as the paper's 'no regularisation'"),
        "paper": Budget("cifar10", 3, {**SGD, "epochs": 40, "batch_size": 128, "in_channels": 3,
                                       "weight_decay": 0.0, "schedule": "constant", "train_ops": "small"}, None,
                        "CIFAR-10 as the paper, with LeNet-5 for its four-layer network"),
    },
    analyse=_relu_tanh,
))


def _ablation(off: str, what: str, paper: dict[str, float], paper_title: str, title: str):
    def analyse(runs: Runs) -> Analysis:
        return _error_analysis(runs, measure=final_test_error, unit="test error %",
                               tests=lambda m: [exceeds(m[off], m["paper"], what=what)], title=title,
                               paper=paper, paper_title=paper_title)

    return analyse


def _alexnet_budgets(note: str) -> dict[str, Budget]:
    down = (DIGITS_NOTE + ", at 67x67 (the smallest input whose AlexNet maps end at 1x1 after pool5; "
            "the paper: 224), with He initialisation (the paper's N(0, 0.01) and biases of 1 leave the outputs "
            "independent of the image for far longer than this budget): " + note)
    he = {"arch_options": {"weight_init": "he"}}
    return {
        "smoke": Budget("digits", 1, {**SGD, **SMOKE, **he, "input_size": 67, "lr": 0.01}, 1, down),
        "small": Budget("digits", 3, {**SGD, **he, "epochs": 10, "batch_size": 64, "input_size": 67, "lr": 0.01,
                                      "weight_decay": 5e-4, "schedule": "cosine"}, 9, down),
        "paper": Budget("imagenet2012", 1, ALEXNET_ILSVRC, None,
                        "the recipe of experiments/alexnet_imagenet.toml (ILSVRC-2012, 90 epochs)"),
    }


register(Finding(
    name="alexnet-lrn",
    paper="Krizhevsky, Sutskever & Hinton 2012, section 3.3",
    claim="Local response normalisation after conv1 and conv2 lowers AlexNet's error.",
    paper_numbers=({"what": "top-1 / top-5 error reduction on ILSVRC", "value": "1.4 / 1.2", "unit": "points",
                    "source": "section 3.3"},
                   {"what": "four-layer CNN on CIFAR-10, test error without / with LRN", "value": "13 / 11",
                    "unit": "%", "source": "section 3.3"}),
    metric="top-1 test error (%) after the last epoch, per seed",
    rule="AlexNet without LRN has a test error above the paper AlexNet's by more than 2 seed standard deviations",
    variants=(Variant("paper", "alexnet", {}, "AlexNet (LRN)"),
              Variant("no-lrn", "alexnet", {"arch_options": {"lrn": False}}, "AlexNet without LRN")),
    budgets=_alexnet_budgets("LRN is the only difference"),
    analyse=_ablation("no-lrn", "no-LRN minus LRN", {"CIFAR-10 without LRN": 13.0, "with LRN": 11.0},
                      "the paper: CIFAR-10 test error %, four-layer CNN (section 3.3)",
                      "Local response normalisation (Krizhevsky et al. 2012, section 3.3)"),
))

register(Finding(
    name="alexnet-overlap-pooling",
    paper="Krizhevsky, Sutskever & Hinton 2012, section 3.4",
    claim="Overlapping max pooling (3x3, stride 2) gives a lower error than non-overlapping 2x2 pooling "
          "at the same output size.",
    paper_numbers=({"what": "top-1 / top-5 error reduction on ILSVRC", "value": "0.4 / 0.3", "unit": "points",
                    "source": "section 3.4"},),
    metric="top-1 test error (%) after the last epoch, per seed",
    rule="AlexNet with 2x2 stride-2 pooling has a test error above the paper AlexNet's (3x3 stride 2) by "
         "more than 2 seed standard deviations",
    variants=(Variant("paper", "alexnet", {}, "AlexNet (3x3/2 pooling)"),
              Variant("no-overlap", "alexnet", {"arch_options": {"overlap_pool": False}}, "AlexNet, 2x2/2 pooling")),
    budgets=_alexnet_budgets("the pooling windows are the only difference; both end at the same map sizes"),
    analyse=_ablation("no-overlap", "non-overlapping minus overlapping",
                      {"top-1 reduction": 0.4, "top-5 reduction": 0.3},
                      "the paper: ILSVRC error reduction, points (section 3.4)",
                      "Overlapping pooling (Krizhevsky et al. 2012, section 3.4)"),
))


# --------------------------------------------------------------------------- evaluation protocols

def _loaded(runs: Runs, variant: str):
    from cnnbench.runs.loaded import load_run

    return [load_run(d, which="latest") for d in runs.dirs[variant]]


def _ensemble(runs: Runs) -> Analysis:
    from cnnbench.eval.evaluate import evaluate_runs

    below = runs.note(f"evaluating the {runs.seeds} models and their ensemble")
    result, _ = evaluate_runs(_loaded(runs, "member"), progress=below)
    singles = stats(100 * (1 - m["top1"]) for m in result["models"])
    ensemble = 100 * (1 - result["top1"])
    measured = {"single model": singles, f"ensemble of {runs.seeds}": stats([ensemble])}
    test = below_all(ensemble, singles, what="ensemble error")
    figs = [figures.bars(measured, runs.out / "bars.png", unit="test error %", dataset=runs.dataset,
                         title="Averaging the softmax of independently trained models (Krizhevsky et al. 2012, "
                               "section 6)", paper={"1 CNN": 18.2, "5 CNNs": 16.4},
                         paper_title="the paper: ILSVRC-2012 top-5 error %")]
    return Analysis(measured, [test], test.verdict, "test error %", figs,
                    {"ensemble_top1": result["top1"], "ensemble_top5": result["top5"], "models": result["models"]})


register(Finding(
    name="ensemble-gain",
    paper="Krizhevsky, Sutskever & Hinton 2012, section 6 (and Zeiler & Fergus 2014, Table 2)",
    claim="Averaging the softmax outputs of several independently trained CNNs gives a lower error than "
          "any one of them.",
    paper_numbers=({"what": "AlexNet, 1 CNN / 5 CNNs, top-5 validation error", "value": "18.2 / 16.4", "unit": "%",
                    "source": "Table 2"},
                   {"what": "ZFNet, 1 / 6 convnets, top-5 error", "value": "16.5 / 14.7", "unit": "%",
                    "source": "Zeiler & Fergus, Table 2"}),
    metric="top-1 test error (%) of each model (one per seed) and of their softmax average",
    rule="the ensemble's error is below the best single model's (holds), above the mean single model's "
         "(does-not-hold), else inconclusive",
    variants=(Variant("member", "lenet5", {}, "LeNet-5"),),
    budgets={
        "smoke": Budget("digits", 2, {**SGD, **SMOKE}, 1, DIGITS_NOTE + "; LeNet-5 members; top-1 (10 classes)"),
        "small": Budget("digits", 5, {**SGD, "epochs": 4, "batch_size": 64}, 1,
                        DIGITS_NOTE + "; five LeNet-5 members as AlexNet's five CNNs; top-1 (10 classes, so "
                        "top-5 says little)"),
        "paper": Budget("imagenet2012", 5, ALEXNET_ILSVRC, None,
                        "five AlexNets on ILSVRC-2012 with the paper's recipe", arch="alexnet"),
    },
    analyse=_ensemble,
))


def _ten_crop(runs: Runs) -> Analysis:
    from cnnbench.eval.evaluate import evaluate_runs

    centre, ten = [], []
    for run in _loaded(runs, "model"):
        below = runs.note(f"evaluating {run.name}: centre crop and 10-crop")
        centre.append(100 * (1 - evaluate_runs([run], crops="center", progress=below)[0]["top1"]))
        ten.append(100 * (1 - evaluate_runs([run], crops="10", progress=below)[0]["top1"]))
    measured = {"centre crop": stats(centre), "10-crop": stats(ten)}
    gain = stats(c - t for c, t in zip(centre, ten))
    test = positive(gain, what="centre-crop minus 10-crop error (per model)")
    figs = [figures.bars(measured, runs.out / "bars.png", unit="test error %", dataset=runs.dataset,
                         title="10-crop vs centre-crop testing of the same models",
                         paper={"VGG gain, low": 0.3, "VGG gain, high": 0.8},
                         paper_title="the paper(s): dense / multi-crop gain, top-1 points")]
    return Analysis(measured, [test], test.verdict, "test error %", figs, {"gain": gain.to_json()})


register(Finding(
    name="ten-crop-gain",
    paper="Krizhevsky, Sutskever & Hinton 2012, section 4.1 (10-crop testing); Simonyan & Zisserman 2015, Table 5",
    claim="Averaging the softmax over the four corner and centre crops and their mirror images gives a lower "
          "error than the centre crop alone.",
    paper_numbers=({"what": "AlexNet, 1 CNN, 10-crop top-1 / top-5 error", "value": "40.7 / 18.2", "unit": "%",
                    "source": "Table 2 (the centre-crop error is not printed)"},
                   {"what": "multi-crop / dense vs single-crop top-1 gain", "value": "0.3-0.8", "unit": "points",
                    "source": "Simonyan & Zisserman, Table 5"}),
    metric="top-1 test error (%) of each model (one per seed) under centre-crop and 10-crop testing",
    rule="the per-model gain (centre-crop error minus 10-crop error) has a mean above 2 standard deviations "
         "of the gains",
    variants=(Variant("model", "lenet5", {}, "LeNet-5"),),
    budgets={
        "smoke": Budget("digits", 1, {**SGD, **SMOKE}, 1, DIGITS_NOTE + "; LeNet-5"),
        "small": Budget("digits", 3, {**SGD, "epochs": 4, "batch_size": 64}, 1,
                        DIGITS_NOTE + "; LeNet-5 trained with random shifts; 10-crop of the image resized to "
                        "37x37 (32 / 0.875). The protocol's mirror images assume classes that survive a "
                        "mirror, which digits do not (a mirrored 2 is no 2)"),
        "paper": Budget("imagenet2012", 1, ALEXNET_ILSVRC, None,
                        "AlexNet on ILSVRC-2012 with the paper's recipe", arch="alexnet"),
    },
    analyse=_ten_crop,
))


# --------------------------------------------------------------------------- transfer (lectures, DeCAF)

TRANSFER_STRATEGIES = ("scratch", "frozen-base", "partial", "all")
#: per source architecture: (the last pooled conv maps, the first and second fully connected layers)
PROBE_LAYERS = {"lenet5": ("s4", "act5", "act6"), "alexnet": ("pool5", "relu6", "relu7")}
PROBE_LABELS = ("pooled conv (DeCAF5-like)", "first FC (DeCAF6-like)", "second FC (DeCAF7-like)")
PER_CLASS = 10  # target training images per class in the small budgets


def _digit_folders(root: Path, budget: str) -> dict:
    """Two offline tasks from the digits: the source task (0-4, every training image) and the target
    task (5-9, ``PER_CLASS`` training images per class, every test image), as image folders."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from cnnbench.pipeline.digits import SPLIT_SEED, TEST_FRACTION

    if budget == "paper":
        return {"source": "imagenet2012", "target": "caltech101"}
    data = load_digits()
    images = np.clip(data.images * 16, 0, 255).astype(np.uint8)
    train, test = train_test_split(np.arange(len(images)), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                   stratify=data.target)
    rng = np.random.default_rng(0)
    per_class = 5 if budget == "smoke" else PER_CLASS
    plan = {"source": {"train": [i for i in train if data.target[i] < 5], "test": [i for i in test if data.target[i] < 5]},
            "target": {"train": [int(i) for c in range(5, 10)
                                 for i in rng.choice([j for j in train if data.target[j] == c], per_class, replace=False)],
                       "test": [i for i in test if data.target[i] >= 5]}}
    places = {}
    for task, splits in plan.items():
        folder = root / f"digits-{task}"
        if not (folder / "done").exists():
            for split, index in splits.items():
                for i in index:
                    path = folder / split / str(data.target[i]) / f"{i:04d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    buffer = io.BytesIO()
                    Image.fromarray(images[i]).save(buffer, format="PNG")
                    path.write_bytes(buffer.getvalue())
            (folder / "done").write_text("")
        places[task] = f"folder:{folder.resolve()}"
    return places


def _transfer(runs: Runs) -> Analysis:
    from cnnbench.runs.config import from_run
    from cnnbench.transfer.probe import run_probe

    measured = {s: runs.per_seed(s, final_test_error) for s in TRANSFER_STRATEGIES}
    tests = [exceeds(measured["scratch"], measured["frozen-base"], what="scratch minus frozen-base error")]
    target_dataset = from_run(runs.dirs["scratch"][0]).dataset
    probes = {}
    for layer, label in zip(PROBE_LAYERS[from_run(runs.dirs["source"][0]).arch], PROBE_LABELS):
        values = []
        for source in runs.dirs["source"]:
            result = run_probe(source, dataset=target_dataset, layer=layer, kind="logreg", per_class=None, count=1,
                               progress=runs.note(f"probing {layer} of {source.name}"))
            values.append(100 * result["top1"])
        probes[label] = stats(values)
    tests.append(exceeds(probes[PROBE_LABELS[2]], probes[PROBE_LABELS[0]],
                         what="second-FC minus pooled-conv probe accuracy"))
    titles = {s: runs.finding_variant(s).title for s in TRANSFER_STRATEGIES}
    figs = [figures.bars({titles[s]: measured[s] for s in TRANSFER_STRATEGIES}, runs.out / "bars.png",
                         unit="target test error %", dataset=runs.dataset, title="Transfer strategies on a small target task"),
            figures.bars(probes, runs.out / "probes.png", unit="linear probe accuracy %", dataset=runs.dataset,
                         title="Which layer transfers: a logistic regression on each layer's features (DeCAF)",
                         paper={"DeCAF5": 63.29, "DeCAF6": 84.30, "DeCAF7": 84.87},
                         paper_title="the paper: Caltech-101, LogReg accuracy % (Donahue et al., Table 4)")]
    return Analysis(measured, tests, all_of(*tests), "target test error %", figs,
                    {"probe_accuracy": {k: v.to_json() for k, v in probes.items()}})


register(Finding(
    name="transfer-strategies",
    paper="CS231n / d2l transfer-learning lectures; Donahue et al., DeCAF, ICML 2014",
    claim="With little target data, a pretrained convolutional base (frozen or fine-tuned) beats training "
          "from scratch, and fully connected features transfer better than the last convolutional ones.",
    paper_numbers=({"what": "DeCAF5 / DeCAF6 / DeCAF7 LogReg accuracy, Caltech-101, 30 per class",
                    "value": "63.29 / 84.30 / 84.87", "unit": "%", "source": "Donahue et al., Table 4"},
                   {"what": "train all / train some layers / freeze the base", "value": "qualitative", "unit": "",
                    "source": "lecture notes: with little data the frozen base is the safer choice"}),
    metric="target test error (%) of each strategy after fine-tuning, and the target accuracy of a logistic "
           "regression on each layer's features of the source model",
    rule="training from scratch has a target test error above the frozen base's by more than 2 seed standard "
         "deviations, and a linear probe on the second fully connected layer's features (LeNet-5's F6, "
         "AlexNet's fc7) is more accurate than on the last pooled conv maps by more than 2",
    variants=(Variant("source", "lenet5", {"dataset": "$source"}, "source model (digits 0-4)"),
              Variant("scratch", "lenet5", {"dataset": "$target"}, "from scratch"),
              Variant("frozen-base", "lenet5", {"dataset": "$target", "init_from": "@source", "trainable": ["head"]},
                      "frozen base, new head"),
              Variant("partial", "lenet5", {"dataset": "$target", "init_from": "@source",
                                            "trainable": ["c5", "head"]}, "train C5 + head"),
              Variant("all", "lenet5", {"dataset": "$target", "init_from": "@source"}, "fine-tune all")),
    budgets={
        "smoke": Budget("digits", 1, {**SGD, "epochs": 1, "batch_size": 16, "train_ops": "shift", "eval_ops": "small"},
                        1, "digits 0-4 (source) and 5-9 with 5 training images per class (target)",
                        ),
        "small": Budget("digits", 3, {**SGD, "epochs": 30, "batch_size": 16, "lr": 0.01, "train_ops": "shift",
                                      "eval_ops": "small"}, 4,
                        f"source task: the digits 0-4 (every training image); target task: the digits 5-9 with "
                        f"{PER_CLASS} training images per class (the paper: ImageNet to Caltech-101, 30 per class)"),
        "paper": Budget("imagenet2012", 1, ALEXNET_ILSVRC, None,
                        "an AlexNet trained on ILSVRC-2012, transferred to Caltech-101 (30 training images per "
                        "class in TFDS's train split)", arch="alexnet",
                        variant_settings={"partial": {"trainable": ["conv5", "head"]},
                                          **{s: {"epochs": 30, "lr": 0.001, "batch_size": 64}
                                             for s in TRANSFER_STRATEGIES if s != "partial"}}),
    },
    analyse=_transfer,
    prepare=_digit_folders,
))


# --------------------------------------------------------------------------- lookup

def get_finding(name: str) -> Finding:
    if name not in FINDINGS:
        close = difflib.get_close_matches(name, FINDINGS, n=3, cutoff=0.75)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(f"unknown finding {name!r}; {hint}(`cnnbench reproduce --list` lists all {len(FINDINGS)})")
    return FINDINGS[name]


def list_findings() -> list[Finding]:
    return list(FINDINGS.values())
