"""What `cnnbench summary` and `cnnbench archs` print: per-layer shapes, parameters, multiply-adds,
activation memory, receptive fields, all derived by tracing the model itself; for a model split
over devices (``--model-parallel``), what one device holds and what crosses devices at each layer.

Multiply-adds count convolutions and dense layers only (one multiply-add per weight use, bias and
element-wise work excluded), which is how torchvision's published "GFLOPS" are counted.
Activation memory counts the outputs of the layers shown by default; element-wise layers
(activations, dropout, batch norm) keep their input's shape and are usually computed in place.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict


from cnnbench.archs import get_arch
from cnnbench.archs.state import abstract_model
from cnnbench.archs.trace import LayerRecord, count_params, trace_model
from cnnbench.parallel import plan

#: layer kinds hidden from the default table (shown with ``--all-layers``)
ELEMENTWISE = frozenset({"act", "dropout", "batchnorm"})
#: families whose paper counts connections (LeCun et al. 1998), shown beside the multiply-adds
CONNECTION_FAMILIES = frozenset({"LeNet"})
KIND_LABEL = {"conv": "convolution", "dense": "dense", "maxpool": "max pooling", "subsampling": "subsampling",
              "rbf": "Euclidean RBF",
              "avgpool": "average pooling", "gap": "global average pooling", "lrn": "LRN",
              "batchnorm": "batch norm"}


@dataclasses.dataclass
class Summary:
    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    params: int           # every trainable parameter of the model
    layers: list[LayerRecord]
    model_parallel: int = 1
    device_params: int = 0  # parameters one device of a model group holds (all of them when not split)

    @property
    def shown(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.kind not in ELEMENTWISE]

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def depth(self) -> int:
        """Weight layers (conv, dense) on the longest path: 8 for AlexNet, 16 for VGG-16, 22 for
        GoogLeNet, 18 for ResNet-18 (shortcut projections run beside the blocks they skip)."""
        return max((r.depth for r in self.layers), default=0)

    @property
    def last_conv(self) -> LayerRecord | None:
        convs = [r for r in self.layers if r.kind == "conv"]
        return convs[-1] if convs else None

    @property
    def activations(self) -> int:
        return sum(r.activations for r in self.shown)

    @property
    def activation_bytes(self) -> int:
        return sum(r.activations * r.itemsize for r in self.shown)

    @property
    def device_activation_bytes(self) -> int:
        """Activation memory per image on one device of a model group (split outputs count a share)."""
        return sum(r.activations * r.itemsize // (self.model_parallel if r.split_output else 1)
                   for r in self.shown)

    @property
    def communication(self) -> list[dict]:
        """The layers whose input crosses devices (or whose partial outputs are summed across
        them), with the bytes each device receives there per image."""
        return [{"layer": r.name, "bytes_per_image": r.moved_bytes,
                 "collective": "all-reduce (sum)" if r.split == "row" else "all-gather"}
                for r in self.layers if r.moved_bytes]

    def per_device(self) -> dict:
        """What one device of a model group holds: parameters, their bytes (float32), the optimiser
        state of the default SGD with momentum (one float32 per parameter; Adam keeps two) and the
        activations of one image."""
        return {"params": self.device_params, "param_bytes": 4 * self.device_params,
                "optimizer_state_bytes": 4 * self.device_params,
                "activation_bytes_per_image": self.device_activation_bytes}

    @property
    def inference_params(self) -> int:
        return sum(r.params for r in self.layers)

    def share_by_kind(self, field: str) -> dict[str, float]:
        totals: dict[str, int] = defaultdict(int)
        for r in self.layers:
            totals[r.kind] += getattr(r, field)
        grand = sum(totals.values()) or 1
        return {k: v / grand for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v}

    def observations(self) -> list[str]:
        """The seeds' three observations on the AlexNet stats slide, computed for this model."""
        notes = []
        rows, total, running = self.shown, self.activations, 0
        for i, r in enumerate(rows, start=1):
            running += r.activations
            if running * 2 >= total:
                notes.append(f"Memory: the first {i} of {len(rows)} layers (up to {r.name}) hold "
                             f"{100 * running / total:.0f}% of the activation memory.")
                break
        for field, what, verb in (("params", "parameters", "hold"), ("macs", "multiply-adds", "do")):
            shares = self.share_by_kind(field)
            if shares:
                kind, share = next(iter(shares.items()))
                notes.append(f"{what.capitalize()}: {KIND_LABEL.get(kind, kind)} layers {verb} "
                             f"{100 * share:.1f}% of the {what}.")
        return notes

    def layer_dict(self, r: LayerRecord) -> dict:
        split = {"split": r.split, "device_params": r.device_params, "moved_bytes_per_image": r.moved_bytes} \
            if self.model_parallel > 1 else {}
        return {
            "name": r.name, "type": r.kind, "kernel": r.kernel, "stride": r.stride,
            "padding": r.padding, "output_shape": list(r.output_shape[1:]), "params": r.params,
            "macs": r.macs, "connections": r.connections, "activations": r.activations,
            "activation_bytes": r.activations * r.itemsize,
            "receptive_field": r.geometry.receptive_field,
            "effective_stride": r.geometry.effective_stride,
            "effective_padding": r.geometry.effective_padding, **split,
        }

    def to_dict(self, all_layers: bool = False) -> dict:
        return {
            "arch": self.arch, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            "params": self.params, "macs": self.macs, "activations": self.activations,
            "activation_bytes": self.activation_bytes,
            "layers": [self.layer_dict(r) for r in (self.layers if all_layers else self.shown)],
            "observations": self.observations(),
            "model_parallel": self.model_parallel, "per_device": self.per_device(),
            "communication": self.communication,
        }


def summarize(name: str, *, input_size: int | None = None, num_classes: int | None = None,
              in_channels: int | None = None, model_parallel: int = 1, **options) -> Summary:
    """The summary of ``name``; with ``model_parallel`` M > 1, of the model split over M devices
    as :func:`cnnbench.parallel.plan` splits it (no device is needed)."""
    info = get_arch(name)
    size, channels = input_size or info.input_size, in_channels or info.in_channels
    model = abstract_model(name, input_size=size, num_classes=num_classes, in_channels=channels, **options)
    plan(model, model_parallel)
    return Summary(arch=name, input_shape=(size, size, channels), num_classes=model.num_classes,
                   params=count_params(model), layers=trace_model(model, (size, size, channels)),
                   model_parallel=model_parallel, device_params=count_params(model, per_device_of=model_parallel))
