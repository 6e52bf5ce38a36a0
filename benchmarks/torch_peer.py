"""cnnbench vs PyTorch/torchvision on the same machine: same models, batch, input size, threads.

    python benchmarks/torch_peer.py --torch-python /work/torchvenv/bin/python \\
        [--archs alexnet-owt,resnet18,vgg11] [--modes train,infer] [--batch-size 32] \\
        [--input-size 224] [--rounds 3] [--steps 3] [--round-warmup 1] [--no-compile] \\
        [--peer-malloc same|default] [--precision fp32|bf16] [--json]
    python benchmarks/torch_peer.py --table saved.json   # the table of a run saved with --json

PyTorch is not a dependency of cnnbench, so the two halves run in two interpreters: this script
runs under cnnbench's environment (JAX) and starts itself again under ``--torch-python`` (any
Python with torch and torchvision) as a worker that takes commands on stdin. Only one of them
computes at a time. For each workload both sides compile and warm up, then ``--rounds`` rounds
interleave ``--steps`` timed steps of cnnbench, PyTorch eager and ``torch.compile`` (where it
compiles), so a noisy neighbour hits every side alike. In every round each side first runs
``--round-warmup`` untimed steps. On the development machine, a virtual machine whose kernel
hands free memory back to the host (free page reporting), a step that follows a few seconds of
another process's work ran slower, as if memory freed before had to be faulted in again from the
host (my reading of the measurements). XLA frees a step's buffers after every step
(1.4 GB for a resnet18 training step), so cnnbench's first step after the other side's turn ran
10-31% slower than its next ones; PyTorch's, which keeps its tensors under 32 MB in the C
library's heap, within -10% to +3% (BENCHMARKS.md, issue 6, "Sixth round"). The warm step times
both sides as training runs them, step after step. The table shows, per side, the median
over all timed steps, and the ratio cnnbench / PyTorch in samples per second (above 1: cnnbench is
faster) three ways: of the medians, the median of the per-round ratios (each round times both
sides back to back), and of the fastest steps (the least disturbed on a shared machine).

The models are torchvision's, and for cnnbench's ``alexnet`` (the 2012 paper's two-tower network
with LRN, which torchvision lacks) the same network in ``torch.nn`` (:func:`paper_alexnet`, the
same 60,965,224 parameters at 227x227).

Training is one optimiser step of SGD with momentum 0.9 and weight decay 5e-4 on a cross-entropy
loss (GoogLeNet adds its auxiliary losses with weight 0.3 on both sides); inference is the forward
pass in eval mode (``torch.inference_mode``). cnnbench runs with the XLA options its command line
sets (:mod:`cnnbench.kernels.flags`, huge pages for large buffers included) and on the devices
it uses (on a CPU one per core for inference, one for training: ``devices`` in the table); PyTorch with
``torch.set_num_threads`` equal to the cores JAX uses and, by default, the same C-library settings
(``--peer-malloc default``: PyTorch as a plain script runs it). Synthetic data, float32, NCHW for
PyTorch (its default), NHWC for cnnbench (its layout).

``--precision bf16`` compares mixed precision as each side's users run it: PyTorch's forward pass
and loss under ``torch.autocast("cpu", torch.bfloat16)`` (float32 weights and optimiser, bf16
matrix products where oneDNN has them), cnnbench's ``--precision bf16`` (float32 master weights,
bf16 compute, :func:`cnnbench.train.step.set_compute_dtype`). The matmul peak is then bf16's.

The last ratio column compares cnnbench with the faster of eager and ``torch.compile`` for that
workload (the PyTorch a user would pick): the issue's measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

#: cnnbench name -> torchvision builder. torchvision's ``googlenet`` has batch norm after every
#: convolution: cnnbench's ``googlenet-bn``, not the paper's ``googlenet`` (no batch norm).
#: torchvision has no two-tower AlexNet: the paper's is built from ``torch.nn`` in the worker
#: (:func:`paper_alexnet`).
TORCHVISION = {"alexnet-owt": "alexnet", "vgg11": "vgg11", "resnet18": "resnet18",
               "resnet50": "resnet50", "googlenet-bn": "googlenet", "alexnet": "paper_alexnet"}


def paper_alexnet(num_classes=1000):
    """Krizhevsky et al. (2012) in ``torch.nn``, as cnnbench's ``alexnet``: 96-256-384-384-256
    with conv2, conv4 and conv5 in two groups (the two GPUs' towers), LRN after relu1 and relu2
    (PyTorch divides ``alpha`` by the window, so 5 x 1e-4), overlapping 3x3/2 pooling, dropout
    before fc7 and fc8. ``LazyLinear`` takes fc6's input size from the first batch (any input size)."""
    from torch import nn

    def lrn():
        return nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.LazyLinear(4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, num_classes))


# --------------------------------------------------------------------------- the PyTorch worker

def torch_worker(threads: int) -> None:
    """Reads one JSON command per line on stdin, answers one JSON line. Never imports cnnbench."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything torch prints goes to stderr, not into the replies
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    prepared = {}

    def setup(cmd):
        torch.manual_seed(0)
        builder = paper_alexnet if cmd["model"] == "paper_alexnet" else getattr(torchvision.models, cmd["model"])
        model = builder(num_classes=1000)
        b, s = cmd["batch_size"], cmd["input_size"]
        bf16 = cmd.get("precision") == "bf16"

        def autocast():  # a fresh context each step (mixed precision as PyTorch's users run it)
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        x, y = torch.randn(b, 3, s, s), torch.randint(0, 1000, (b,))
        with torch.no_grad():
            model.eval()(x[:1])  # lazy layers take their shapes before the optimiser sees them
        run = torch.compile(model) if cmd["variant"] == "compile" else model
        if cmd["mode"] == "train":
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            ce = torch.nn.functional.cross_entropy

            def step():
                opt.zero_grad(set_to_none=True)
                with autocast():
                    out = run(x)
                    if isinstance(out, tuple):  # GoogLeNet: (logits, aux2, aux1)
                        loss = ce(out[0], y) + 0.3 * sum(ce(a, y) for a in out[1:] if a is not None)
                    else:
                        loss = ce(out, y)
                loss.backward()
                opt.step()
        else:
            model.eval()

            def step():
                with torch.inference_mode(), autocast():
                    run(x)
        t = time.perf_counter()
        step()  # the first call compiles (torch.compile) or allocates
        first = time.perf_counter() - t
        step()
        prepared[cmd["key"]] = step
        return {"first_step_s": first}

    def timed(cmd):
        step, times = prepared[cmd["key"]], []
        for _ in range(cmd["steps"]):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return {"times": times}

    reply.write(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                            "threads": torch.get_num_threads()}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "setup":
                out = setup(cmd)
            elif cmd["op"] == "time":
                out = timed(cmd)
            elif cmd["op"] == "free":
                prepared.clear()
                out = {}
            else:
                break
        except Exception as e:  # e.g. torch.compile failing for one model: report, keep serving
            out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        reply.write(json.dumps(out) + "\n")


class TorchWorker:
    def __init__(self, python: str, threads: int, env: dict | None = None):
        """Starts the worker; raises RuntimeError (one line) when it cannot run or import torch."""
        try:
            self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", "--threads", str(threads)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                         env=env)
        except OSError as e:
            raise RuntimeError(f"cannot run --torch-python {python}: {e.strerror}") from None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            raise RuntimeError(f"the PyTorch worker under {python} exited before starting "
                               "(is torch with torchvision installed there? its error is above)")
        self.versions = json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker died (see its stderr above)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# --------------------------------------------------------------------------- the comparison

def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", "/work/torchvenv/bin/python"))
    parser.add_argument("--archs", default="alexnet-owt,resnet18,vgg11")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per side per round.")
    parser.add_argument("--round-warmup", type=int, default=1,
                        help="Untimed steps per side at the start of every round (memory back in place).")
    parser.add_argument("--no-compile", action="store_true", help="Skip torch.compile.")
    parser.add_argument("--peer-malloc", choices=("same", "default"), default="same",
                        help="same: the PyTorch worker gets cnnbench's C-library settings (huge pages); "
                             "default: it runs with the library's defaults, as a plain PyTorch script does.")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: PyTorch under torch.autocast('cpu', torch.bfloat16), cnnbench with --precision bf16.")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--table", metavar="JSON", help="Print the table of a run saved with --json, and stop.")
    args = parser.parse_args()
    if args.worker:
        return torch_worker(args.threads)
    if args.table:
        try:
            with open(args.table) as f:
                return print_table(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable, not JSON, not a --json run
            sys.exit(f"torch_peer.py: --table {args.table}: not a run saved with --json ({type(e).__name__}: {e})")
    if args.round_warmup < 0 or args.steps < 1 or args.rounds < 1:
        parser.error("--rounds and --steps must be at least 1, --round-warmup at least 0")

    unknown = [a for a in args.archs.split(",") if a not in TORCHVISION]
    if unknown:
        parser.error(f"no torchvision peer for {', '.join(unknown)}; choose from {', '.join(TORCHVISION)}")
    from cnnbench.kernels import flags

    # What the `cnnbench` command runs with: huge pages for large buffers (a re-run of this script;
    # the PyTorch worker inherits the environment, so both sides get them; CNNBENCH_HUGEPAGES=0
    # for neither), then the XLA options, before JAX starts.
    flags.use_hugepages()
    xla_flags = flags.apply()
    try:
        flags.use_cpu_devices()
    except ValueError as e:
        sys.exit(f"error: {e}")
    import jax

    from cnnbench.parallel import make_mesh
    from cnnbench.perf.bench import Prepared, matmul_peak

    peer_env = dict(os.environ)
    if args.peer_malloc == "default":
        peer_env.pop("GLIBC_TUNABLES", None)
    try:
        torch = TorchWorker(args.torch_python, args.threads, peer_env)
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    variants = ["eager"] + ([] if args.no_compile else ["compile"])
    peaks, results = [], []
    print(f"# {machine()}; jax {jax.__version__}, torch {torch.versions['torch']} "
          f"({torch.versions['threads']} threads); XLA_FLAGS={xla_flags or '(none)'}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES') or '(none)'}", file=sys.stderr)
    for arch in args.archs.split(","):
        for mode in args.modes.split(","):
            label = f"{arch} {mode} b{args.batch_size} {args.input_size}px {args.precision}"
            mesh = make_mesh(training=mode == "train", batch_size=args.batch_size)  # as `cnnbench bench` does
            ours = Prepared(arch, mode, args.batch_size, input_size=args.input_size, precision=args.precision,
                            mesh=mesh)
            ours.run(2)
            peers = {}
            for v in variants:
                answer = torch.ask(op="setup", key=v, model=TORCHVISION[arch], mode=mode, variant=v,
                                   batch_size=args.batch_size, input_size=args.input_size, precision=args.precision)
                if "error" in answer:
                    print(f"{label}: torch {v}: {answer['error']}", file=sys.stderr)
                else:
                    peers[v] = answer
            times = {"cnnbench": [], **{v: [] for v in peers}}
            warm = {k: [] for k in times}  # each round's untimed first steps, kept for the record
            for r in range(args.rounds):  # interleaved: every side sees the same neighbours
                peaks.append(matmul_peak(mesh, args.precision, repeats=2))
                warm["cnnbench"] += ours.run(args.round_warmup)
                times["cnnbench"] += ours.run(args.steps)
                for v in peers:
                    if args.round_warmup:
                        warm[v] += torch.ask(op="time", key=v, steps=args.round_warmup)["times"]
                    times[v] += torch.ask(op="time", key=v, steps=args.steps)["times"]
                print(f"{label} round {r + 1}: " + ", ".join(
                    f"{k} {1e3 * statistics.median(t[-args.steps:]):.0f} ms" for k, t in times.items()),
                    file=sys.stderr, flush=True)
            torch.ask(op="free")
            med = {k: statistics.median(t) for k, t in times.items()}
            n = args.steps

            def round_ratios(v):
                return [statistics.median(times[v][i:i + n]) / statistics.median(times["cnnbench"][i:i + n])
                        for i in range(0, len(times["cnnbench"]), n)]
            row = {"arch": arch, "torchvision": TORCHVISION[arch], "mode": mode, "precision": args.precision,
                   "batch_size": args.batch_size, "devices": int(mesh.devices.size),
                   "input_size": args.input_size, "cnnbench_ms": 1e3 * med["cnnbench"],
                   "cnnbench_samples_per_sec": args.batch_size / med["cnnbench"],
                   "cnnbench_compile_s": ours.compile_s, "flops_per_step": ours.flops_per_step,
                   "cnnbench_flops_per_sec": ours.flops_per_step / med["cnnbench"],
                   "cnnbench_best_flops_per_sec": ours.flops_per_step / min(times["cnnbench"]),
                   "times_s": times, "round_warmup_times_s": warm}
            for v in variants:
                if v in med:
                    row[f"torch_{v}_ms"] = 1e3 * med[v]
                    row[f"torch_{v}_samples_per_sec"] = args.batch_size / med[v]
                    row[f"ratio_vs_{v}"] = med[v] / med["cnnbench"]
                    row[f"round_ratio_vs_{v}"] = statistics.median(round_ratios(v))
                    row[f"best_ratio_vs_{v}"] = min(times[v]) / min(times["cnnbench"])
                    row[f"torch_{v}_first_step_s"] = peers[v]["first_step_s"]
            if peers:  # against the PyTorch a user would pick for this workload
                best = min(peers, key=lambda v: med[v])
                row["best_peer"], row["ratio_vs_best_peer"] = best, med[best] / med["cnnbench"]
            results.append(row)
            del ours
    torch.close()
    peak = max(peaks)  # the least disturbed measurement of the ceiling
    for row in results:
        row["utilization"] = row["cnnbench_flops_per_sec"] / peak
        row["best_utilization"] = row["cnnbench_best_flops_per_sec"] / peak
    doc = {"machine": machine(), "jax": jax.__version__, "torch": torch.versions["torch"],
           "torchvision": torch.versions["torchvision"], "threads": args.threads, "xla_flags": xla_flags,
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "peer_malloc": args.peer_malloc,
           "precision": args.precision, "rounds": args.rounds, "steps": args.steps, "round_warmup": args.round_warmup,
           "matmul_peak_flops": peak, "results": results}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print_table(doc)


def print_table(doc: dict) -> None:
    """The markdown table of a run (``--json``'s document, or one saved and read back with ``--table``)."""
    print(f"machine: {doc['machine']}; jax {doc['jax']}, torch {doc['torch']}, torchvision "
          f"{doc['torchvision']}, {doc['threads']} threads; XLA_FLAGS={doc['xla_flags'] or '(none)'}; "
          f"GLIBC_TUNABLES={doc['glibc_tunables'] or '(none)'} (PyTorch worker: {doc['peer_malloc']})")
    print(f"{doc['precision']}; {doc['rounds']} interleaved rounds x {doc['steps']} steps (after {doc['round_warmup']} untimed); "
          f"matmul peak {doc['matmul_peak_flops'] / 1e9:.0f} GFLOP/s (best); ratios: of medians / median per round / of fastest steps")
    head = ["workload", "cnnbench img/s", "torch eager img/s", "ratio", "torch.compile img/s", "ratio",
            "cnnbench % of peak (median / fastest)", "vs faster peer"]
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for r in doc['results']:
        cells = [f"{r['arch']} {r['mode']}" + (f" ({r['devices']} devices)" if r.get("devices", 1) > 1 else ""),
                 f"{r['cnnbench_samples_per_sec']:.1f}"]
        for v in ("eager", "compile"):
            if f"ratio_vs_{v}" in r:
                cells += [f"{r[f'torch_{v}_samples_per_sec']:.1f}",
                          f"{r[f'ratio_vs_{v}']:.2f} / {r[f'round_ratio_vs_{v}']:.2f} / {r[f'best_ratio_vs_{v}']:.2f}"]
            else:
                cells += ["-", "-"]
        cells.append(f"{r['utilization']:.0%} / {r['best_utilization']:.0%}")
        cells.append(f"{r['ratio_vs_best_peer']:.2f} ({r['best_peer']})" if "best_peer" in r else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
