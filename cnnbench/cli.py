"""The `cnnbench` program: the process's settings (huge pages, XLA's options, the CPU's devices,
the compile cache), then the command line (:mod:`cnnbench.commands`)."""

from __future__ import annotations

from cnnbench.commands import cli

__all__ = ["cli", "main"]


def main(argv=None):
    from cnnbench.kernels import flags

    if argv is None:  # the command itself, not a call from Python code
        flags.use_hugepages()  # re-runs the command once, with huge pages for large buffers
    flags.apply()  # XLA reads its options once, before JAX's first use: set ours now
    try:
        flags.use_cpu_devices()  # one device per core (inference splits its batches over them)
    except ValueError as e:
        import click

        click.echo(f"Error: {e}", err=True)
        raise SystemExit(2) from None
    flags.use_compile_cache()
    cli.main(args=argv, prog_name="cnnbench")


if __name__ == "__main__":
    main()
