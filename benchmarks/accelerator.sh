#!/usr/bin/env bash
# The prepared accelerator check (issue 26): on a machine with a GPU (or TPU), within a fixed time,
#   1. installs cnnbench into a fresh venv that sees the machine's own JAX/Flax (no network needed:
#      the machine python's packages are visible in it, then `pip install --no-deps -e .`; wheels in
#      .whl/ are installed first),
#   2. checks that the CPU-only convolution formulations are off on that backend,
#   3. runs the test suite (on the host CPU, as CI does: tests/conftest.py pins JAX_PLATFORMS=cpu;
#      the data tests need TensorFlow, which an accelerator image may lack: carry its wheels in .whl/),
#   4. `cnnbench bench resnet50 --precision bf16 --auto-batch` (training, large batch),
#   5. the other workloads (alexnet-owt, resnet18, googlenet-bn, vgg11; train and infer) at large batch,
#   6. a short `cnnbench train` on synthetic data,
#   7. the input pipeline's rate (`cnnbench data bench`),
# and prints one table (Markdown) with every step's status and headline number. Each step has its own
# time limit; a step that fails or runs out of time is reported as such and the next one runs.
#
#   benchmarks/accelerator.sh [--budget SECONDS] [--batch-size N] [--out DIR] [--only STEP,STEP]
#
# Defaults: --budget 540 (one 10-minute device call), --batch-size 256, --out ./accelerator-out,
# every step (install, backend, tests, resnet50_bf16, workloads, train, pipeline).
# The step outputs (JSON, logs) stay in --out; the table is also written to OUT/table.md.
# Reference for step 4: NVIDIA's DeepLearningExamples report ~2,600-2,800 images/s per H100 for
# ResNet-50 v1.5 training with AMP.
set -uo pipefail

budget=540
batch=256
out=accelerator-out
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --batch-size) batch="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
mkdir -p "$out"
start=$(date +%s)
status_file="$out/steps.tsv"
: > "$status_file"

left() { echo $(( budget - ($(date +%s) - start) )); }

# step NAME SHARE_OF_BUDGET_PERCENT COMMAND...: runs COMMAND with a time limit of that share of the
# budget (at most what is left), its stdout to OUT/NAME.out and stderr to OUT/NAME.log
step() {
  local name="$1" share="$2"; shift 2
  if [ -n "$only" ] && [[ "$only" != *",$name,"* ]]; then
    [ -t 0 ] || cat > /dev/null  # (a step's script on stdin is not run)
    return
  fi
  local limit=$(( budget * share / 100 ))
  local remaining; remaining=$(left)
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  if [ "$limit" -lt 10 ]; then
    printf '%s\tskipped\t0\tno time left\n' "$name" >> "$status_file"; return
  fi
  local t0; t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" >&2
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.out" 2> "$out/$name.log"
  local rc=$? took=$(( $(date +%s) - t0 ))
  local state=ok
  [ $rc -ne 0 ] && state="failed (exit $rc)"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && state="out of time"
  printf '%s\t%s\t%s\t%s\n' "$name" "$state" "$took" "$(tail -n 1 "$out/$name.log" | tr '\t' ' ' | cut -c1-160)" >> "$status_file"
}

# 1. a fresh venv over the machine's own accelerator JAX (nothing is downloaded)
# (the machine's python3 may itself be a venv, whose packages --system-site-packages would not
# reach: its site-packages are added to the new venv by a .pth file instead)
venv="${CNNBENCH_ACCEL_VENV:-/tmp/cnnbench-accel-venv}"
parent_site=$(python3 -c 'import site; print("\n".join(site.getsitepackages()))')
python3 -m venv "$venv" && . "$venv/bin/activate"
echo "$parent_site" > "$(python -c 'import site; print(site.getsitepackages()[0])')/zz-machine-packages.pth"
install() {
  if ls .whl/*.whl > /dev/null 2>&1; then
    python -m pip install -q --no-index --no-deps .whl/*.whl || return 1
  fi
  python -m pip install -q --no-index --no-deps --no-build-isolation -e . &&
    python -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
}
export -f install
step install 10 bash -c install

# 2. the backend, and the formulation choice there (no CPU-only formulation on an accelerator)
step backend 5 python - <<'EOF'
import json

import jax
import jax.numpy as jnp

from cnnbench.archs import create_model
from cnnbench.archs.trace import trace_model
from cnnbench.kernels import fastops

model = create_model("resnet18", input_size=64)
convs = sum(r.kind == "conv" for r in trace_model(model, (64, 64, 3)))
text = jax.jit(lambda x: model(x, train=False)).lower(jnp.zeros((2, 64, 64, 3))).as_text()
plain = text.count("stablehlo.convolution") == convs  # every layer XLA's own convolution
print(json.dumps({"platform": jax.default_backend(), "chosen_for": fastops.platform(),
                  "device_kind": jax.devices()[0].device_kind, "devices": len(jax.devices()),
                  "plain_convolutions": plain}))
assert jax.default_backend() == "cpu" or plain, "a CPU-only convolution formulation reached an accelerator program"
EOF

# 3. the test suite, on the host CPU
step tests 30 python -m pytest -q -p no:cacheprovider

# 4. ResNet-50 bf16 training at large batch (the figure NVIDIA publishes)
step resnet50_bf16 15 cnnbench bench resnet50 --mode train --precision bf16 --batch-size "$batch" \
  --auto-batch --steps 20 --format json

# 5. the other workloads, training and inference, bf16, large batch
step workloads 20 cnnbench bench alexnet-owt resnet18 googlenet-bn vgg11 --mode both --precision bf16 \
  --batch-size "$batch" --auto-batch --steps 10 --format json

# 6. a short training run on synthetic data (the whole loop: pipeline, step, checkpoint, validation)
rm -rf "$out/train-run"
step train 10 cnnbench train resnet18 --dataset "synthetic:64x64x3:100:$((batch * 8))" --input-size 64 \
  --epochs 2 --batch-size "$batch" --precision bf16 --run-dir "$out/train-run" --format json

# 7. the input pipeline's rate (the offline digits, the default recipe)
step pipeline 10 cnnbench data bench digits --size 32 --batch-size "$batch" --batches 20 --format json

python - "$out" <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
steps = [line.rstrip("\n").split("\t") for line in (out / "steps.tsv").read_text().splitlines()]


def doc(name):
    try:
        return json.loads((out / f"{name}.out").read_text())
    except (OSError, ValueError):
        return None


def rows(d):
    return d if isinstance(d, list) else (d or {}).get("rows", []) if isinstance(d, dict) else []


lines = ["| step | status | seconds | result |", "| --- | --- | ---: | --- |"]
for name, state, took, last in steps:
    d, result = doc(name), ""
    if name == "install":
        result = (out / "install.out").read_text().strip().splitlines()[-1] if (out / "install.out").exists() else ""
    elif name == "backend" and d:
        result = f"{d['platform']} ({d['device_kind']}), plain convolutions: {d['plain_convolutions']}"
    elif name in ("resnet50_bf16", "workloads"):
        result = "; ".join(f"{r['arch']} {r['mode']} b{r['batch_size']}: {r['samples_per_sec']:,.0f} img/s"
                           f" ({r['utilization']:.0%} of peak)" for r in rows(d))
    elif name == "train" and isinstance(d, dict):
        result = f"{d.get('images_per_sec', 0):,.0f} train img/s, val top-1 {d.get('final', {}).get('top1')}"
    elif name == "pipeline":
        result = "; ".join(f"{r['pipeline']}: {r['images_per_sec']:,.0f} img/s" for r in rows(d))
    elif name == "tests":
        result = last
    if state != "ok" and not result:
        result = last
    lines.append(f"| {name} | {state} | {took} | {result} |")
table = "\n".join(lines)
(out / "table.md").write_text(table + "\n")
print(table)
EOF
