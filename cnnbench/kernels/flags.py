"""The XLA options and process settings the `cnnbench` command sets, and why.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so the command line sets them in
:func:`cnnbench.cli.main` before any command imports JAX. A flag the user already put in
``XLA_FLAGS`` wins (their value is kept, ours is not added); ``CNNBENCH_XLA_DEFAULTS=0`` turns all
of ours off. Importing ``cnnbench`` as a library sets nothing: call :func:`apply` first if wanted.

Each entry was kept because whole training/inference steps measured faster with it, interleaved
against the same step without it (BENCHMARKS.md, "XLA options").

Options that only matter for one kind of program are given to that program alone
(:data:`STEP_OPTIONS`, for the training step, as ``jax.jit(..., compiler_options=...)``): they
hold for library users too, and a name a newer XLA no longer knows is dropped instead of
aborting the process, as an unknown name in ``XLA_FLAGS`` does.
"""

from __future__ import annotations

import functools
import os

#: flag -> (value, why). Only CPU flags so far; other backends ignore them.
DEFAULTS: dict[str, tuple[str, str]] = {}


def _names(xla_flags: str) -> set[str]:
    """The flags an ``XLA_FLAGS`` value names, with their dashes (``--xla_a=1 --xla_b`` -> both)."""
    return {part.split("=", 1)[0] for part in xla_flags.split()}


def merged(existing: str, defaults: dict[str, tuple[str, str]] = DEFAULTS) -> str:
    """``existing`` XLA_FLAGS plus every default whose flag it does not already name."""
    named = _names(existing)
    extra = [f"{flag}={value}" for flag, (value, _) in defaults.items() if flag not in named]
    return " ".join([existing.strip(), *extra]).strip()


def apply(environ=os.environ) -> str:
    """Add the defaults to ``XLA_FLAGS`` (unless ``CNNBENCH_XLA_DEFAULTS=0``); returns the result.
    Has no effect on a JAX backend that already exists."""
    if environ.get("CNNBENCH_XLA_DEFAULTS", "1") != "0":
        value = merged(environ.get("XLA_FLAGS", ""))
        if value:
            environ["XLA_FLAGS"] = value
    return environ.get("XLA_FLAGS", "")


#: Options of the jitted training step (which donates its state and updates it in place):
#: option -> (value, why). Same rules as :data:`DEFAULTS` (``CNNBENCH_XLA_DEFAULTS=0``, the user's
#: ``XLA_FLAGS`` win); see :func:`step_options`.
STEP_OPTIONS: dict[str, tuple[object, str]] = {
    "xla_cpu_copy_insertion_use_region_analysis": (
        True,
        "XLA:CPU's copy insertion otherwise copies donated parameters and loop-carried buffers it "
        "could update in place: 298 MB of copies per alexnet-owt training step (fc6's 151 MB "
        "weight among them) down to 54 MB. Interleaved whole steps, median: alexnet-owt training "
        "-8% to -17% (separate processes taking turns), -2.5% and -9% (one process, "
        "benchmarks/step_options.py); vgg11 -8%; resnet18 (11M parameters) unchanged. Results "
        "are bit-identical (tests/test_bench.py)."),
}


@functools.cache
def _accepted(name: str, value) -> bool:
    """Whether this jaxlib's XLA knows the option (a tiny program compiled with it)."""
    import jax

    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(1.0).compile()
    except Exception:  # e.g. "No such compile option" from a newer or older XLA
        return False
    return True


def step_options(environ=os.environ, options: dict[str, tuple[object, str]] | None = None) -> dict:
    """The :data:`STEP_OPTIONS` to compile a training step with: none with
    ``CNNBENCH_XLA_DEFAULTS=0``, none the user names in ``XLA_FLAGS`` (theirs stands), none this
    XLA does not know."""
    if environ.get("CNNBENCH_XLA_DEFAULTS", "1") == "0":
        return {}
    options = STEP_OPTIONS if options is None else options
    named = {flag.lstrip("-") for flag in _names(environ.get("XLA_FLAGS", ""))}
    return {name: value for name, (value, _) in options.items() if name not in named and _accepted(name, value)}


#: Where compiled programs are kept between runs (JAX's persistent compilation cache), and its cap.
CACHE_ENV, CACHE_MAX_BYTES = "CNNBENCH_COMPILE_CACHE", 4 << 30


def cache_dir(environ=os.environ) -> str | None:
    """``$CNNBENCH_COMPILE_CACHE`` (a folder, or 0 for none), else ``$XDG_CACHE_HOME/cnnbench/jax``
    (``~/.cache/cnnbench/jax``)."""
    value = environ.get(CACHE_ENV, "").strip()
    if value == "0":
        return None
    if value:
        return os.path.expanduser(value)
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cnnbench", "jax")


def use_compile_cache(environ=os.environ) -> str | None:
    """Turn on JAX's persistent compilation cache for this process (the `cnnbench` command does;
    importing the package does not). A second run of the same command then loads its programs
    instead of compiling them: `visualize occlusion` on alexnet-owt starts in 0.5 s instead of 4,
    a resnet18 benchmark compiles in 0.5 s instead of 3 (BENCHMARKS.md). Programs that compile in
    under a second are not stored; the folder is capped at 4 GiB (least recently used entries go first)."""
    path = cache_dir(environ)
    if path is None:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


#: ``CNNBENCH_HUGEPAGES=0`` keeps the C library's default (4 KiB pages for every buffer).
HUGEPAGES_ENV, HUGEPAGES_TUNABLE = "CNNBENCH_HUGEPAGES", "glibc.malloc.hugetlb=1"


def _glibc_version() -> tuple[int, ...] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def _thp_mode(path="/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The selected transparent-huge-page mode (``always``, ``madvise`` or ``never``)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def hugepage_environ(environ=os.environ, glibc=None, thp=None) -> dict | None:
    """The environment to re-run this process in so the C library backs large buffers with
    transparent huge pages, or None where that would change nothing (turned off, not glibc 2.35+,
    THP off in the kernel, already set).

    XLA:CPU allocates a step's large buffers afresh on every run; glibc hands them out as new
    mappings whose 4 KiB pages the kernel faults in and zeroes one at a time, on every step: 87 MB
    per alexnet-owt inference step, 348 MB per resnet18 one. ``glibc.malloc.hugetlb=1`` asks
    for 2 MiB pages instead (500x fewer faults): steps measured 9-15% faster (BENCHMARKS.md)."""
    glibc = _glibc_version() if glibc is None else glibc
    thp = _thp_mode() if thp is None else thp
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(HUGEPAGES_ENV, "1") == "0" or not glibc or glibc < (2, 35) \
            or thp not in ("always", "madvise") or "glibc.malloc.hugetlb" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGEPAGES_TUNABLE]))}


def use_hugepages() -> None:
    """Re-run this very command line (``sys.orig_argv``) with :func:`hugepage_environ`, before any
    work is done; glibc reads its tunables only when a process starts. Does nothing where that
    changes nothing, or where the program came from standard input (it could not be read again)."""
    import sys

    env = hugepage_environ()
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv or sys.argv[0] in ("", "-"):  # interactive, or a script from stdin
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # no interpreter path to re-run: carry on with the default pages
        return


#: ``CNNBENCH_CPU_DEVICES``: how many devices the command makes of the CPU when no accelerator is
#: used. ``auto`` (the default): one per core this process may run on, rounded down to a power of
#: two, at most :data:`MAX_CPU_DEVICES`; a number: that many; ``1``: JAX's single CPU device.
CPU_DEVICES_ENV, MAX_CPU_DEVICES = "CNNBENCH_CPU_DEVICES", 8
#: What :func:`use_cpu_devices` writes beside ``JAX_NUM_CPU_DEVICES``, so that this process and the
#: commands it starts can tell cnnbench's split from one the user asked for.
_SPLIT_MARK = "CNNBENCH_SPLIT_CPU_DEVICES"


def cpu_device_count(environ=os.environ, cores: int | None = None) -> int | None:
    """How many CPU devices to ask JAX for, or None to leave its choice alone: a device count the
    user set (``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, ``JAX_NUM_CPU_DEVICES``)
    stands, and ``CNNBENCH_CPU_DEVICES=1`` keeps the one device. Raises ValueError on a value that is
    neither ``auto`` nor a whole number of at least 1.

    Why: XLA:CPU runs one program's operations one after another, each spread over the cores; in
    the many small operations of an inference step (the Winograd and patch loops' chunks) a core
    waits. With a device per core, the batch is split and both halves run at once: on two cores
    googlenet-bn inference 1.30-1.35x, resnet18 1.19-1.28x, resnet50 1.14x, vgg11 1.05x,
    alexnet-owt 0.96-1.10x. Training steps did not gain (alexnet-owt 0.78-0.82x: each device
    updates all 61M parameters), so training uses one of them (:func:`cnnbench.parallel.mesh.default_devices`);
    a single-device step on that backend measured level with one on a one-device backend
    (BENCHMARKS.md, issue 26). Only two-core machines were measured; above 8 cores the split is
    untried and stays at 8."""
    if "--xla_force_host_platform_device_count" in _names(environ.get("XLA_FLAGS", "")):
        return None
    if "JAX_NUM_CPU_DEVICES" in environ and environ.get(_SPLIT_MARK) != environ["JAX_NUM_CPU_DEVICES"]:
        return None
    value = environ.get(CPU_DEVICES_ENV, "auto").strip().lower() or "auto"
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) if cores is None else cores
        n = 1
        while n * 2 <= min(cores, MAX_CPU_DEVICES):
            n *= 2
    elif value.isdigit() and int(value) >= 1:
        n = int(value)
    else:
        raise ValueError(f"{CPU_DEVICES_ENV}={value!r}: use auto or a number of devices (1 for one)")
    return n if n > 1 else None


def use_cpu_devices(environ=os.environ) -> int:
    """Ask JAX (``JAX_NUM_CPU_DEVICES``, read when it starts) for :func:`cpu_device_count` CPU
    devices; returns how many, 0 where it leaves JAX's choice. The `cnnbench` command calls it
    before JAX starts; importing the package does not. Accelerators are not affected: where JAX
    uses a GPU or TPU its CPU devices run nothing."""
    n = cpu_device_count(environ)
    if n is None:
        environ.pop(_SPLIT_MARK, None)
        return 0
    environ["JAX_NUM_CPU_DEVICES"] = environ[_SPLIT_MARK] = str(n)
    return n


def split_cpu_devices(environ=os.environ) -> int:
    """How many CPU devices :func:`use_cpu_devices` made for this process (0: none, JAX's or the
    user's choice stands)."""
    mark = environ.get(_SPLIT_MARK, "")
    return int(mark) if mark.isdigit() and mark == environ.get("JAX_NUM_CPU_DEVICES") else 0
