"""The `cnnbench` program: XLA's options, then the command line (:mod:`cnnbench.commands`)."""

from __future__ import annotations

from cnnbench.commands import cli

__all__ = ["cli", "main"]


def main(argv=None):
    from cnnbench.kernels import flags

    if argv is None:  # the command itself, not a call from Python code
        flags.use_hugepages()  # re-runs the command once, with huge pages for large buffers
    flags.apply()  # XLA reads its options once, before JAX's first use: set ours now
    flags.use_compile_cache()
    cli.main(args=argv, prog_name="cnnbench")


if __name__ == "__main__":
    main()
