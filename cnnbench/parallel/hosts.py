"""Multi-host start-up that fails in one line: check the process numbering, and gather every process
at the coordinator (a TCP check-in on the port after JAX's) within a bounded time before JAX's own
rendezvous, which otherwise waits five minutes and then aborts the process from C++."""

from __future__ import annotations

import socket
import time

from cnnbench.errors import UsageError, setting

DEFAULT_TIMEOUT = 30.0  # seconds every process waits for the others


def check_numbering(num_processes: int | None, process_id: int | None) -> None:
    if num_processes is not None and num_processes < 1:
        raise UsageError(f"{setting('num_processes')} must be at least 1, not {num_processes}")
    if process_id is not None and process_id < 0:
        raise UsageError(f"{setting('process_id')} must be at least 0, not {process_id}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise UsageError(f"{setting('process_id')} {process_id} is not one of the {num_processes} processes "
                         f"({setting('process_id')} 0 to {num_processes - 1})")


def _address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise UsageError(f"{setting('coordinator')} must be HOST:PORT (e.g. 10.0.0.1:1234), not {coordinator!r}")
    return host.strip("[]"), int(port)


def _how(coordinator: str, num_processes: int) -> str:
    return (f"start each with --coordinator {coordinator} --num-processes {num_processes} --process-id I "
            f"(I = 0..{num_processes - 1}) and the same --run-dir on a shared file system, or raise --init-timeout")


def check_in(coordinator: str, num_processes: int, process_id: int, timeout: float = DEFAULT_TIMEOUT,
             run_dir: str = "") -> None:
    """Return once all ``num_processes`` processes have reached the coordinator (port + 1 of
    ``coordinator``) with the same ``run_dir``; a :class:`UsageError` after ``timeout`` seconds
    says who is missing, and at once when a process names another run directory."""
    host, port = _address(coordinator)
    if num_processes == 1:
        return
    deadline = time.monotonic() + timeout
    if process_id == 0:
        _gather(port + 1, num_processes, deadline, coordinator, timeout, run_dir)
    else:
        _report(host, port + 1, process_id, num_processes, deadline, coordinator, timeout, run_dir)


def _gather(port: int, num_processes: int, deadline: float, coordinator: str, timeout: float, run_dir: str) -> None:
    try:
        server = socket.create_server(("", port), reuse_port=False)
    except OSError as e:
        raise UsageError(f"process 0 cannot listen on port {port} (the check-in port after {coordinator}): "
                         f"{e.strerror or e}; choose another {setting('coordinator')} port") from None
    joined, waiting = {0}, []
    try:
        while len(joined) < num_processes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = ", ".join(str(i) for i in range(num_processes) if i not in joined)
                raise UsageError(f"only {len(joined)} of {num_processes} processes joined {coordinator} within "
                                 f"{timeout:g} s (missing {setting('process_id')} {missing}); {_how(coordinator, num_processes)}")
            server.settimeout(remaining)
            try:
                conn, _ = server.accept()
            except (socket.timeout, TimeoutError):
                continue
            conn.settimeout(max(remaining, 0.1))
            try:
                who, _, theirs = conn.recv(4096).decode().strip().partition("\t")
                joined.add(int(who))
                waiting.append(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            if theirs != run_dir:
                message = (f"process {who} was given --run-dir {theirs or '(none)'} and process 0 "
                           f"{run_dir or '(none)'}: every process needs the same run directory, on a file "
                           f"system they share (process 0 writes it)")
                for other in waiting:
                    other.sendall(f"no\t{message}\n".encode())
                raise UsageError(message)
        for conn in waiting:
            conn.sendall(b"go\n")
    finally:
        for conn in waiting:
            conn.close()
        server.close()


def _report(host: str, port: int, process_id: int, num_processes: int, deadline: float, coordinator: str,
            timeout: float, run_dir: str) -> None:
    reached = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = ("process 0 did not see every process in time" if reached else
                    f"no process 0 answered at {coordinator}")
            raise UsageError(f"process {process_id}: {what} within {timeout:g} s; {_how(coordinator, num_processes)}")
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 2.0)) as conn:
                reached = True
                conn.sendall(f"{process_id}\t{run_dir}\n".encode())
                conn.settimeout(max(deadline - time.monotonic(), 0.1))
                answer = conn.recv(4096).decode()
                if answer.startswith("go"):
                    return
                if answer.startswith("no\t"):
                    raise UsageError(answer[3:].strip())
        except OSError:
            pass
        time.sleep(0.2)


def end_on_sigterm(grace: float = 20.0) -> None:
    """SIGTERM ends the process: the training loop unwinds (the checkpoint being written
    completes, the run directory's lock is released) and, should a collective wait on a process
    that is gone, a watchdog exits after ``grace`` seconds anyway. (JAX's distributed runtime
    installs a preemption notifier that catches SIGTERM and carries on, so a run could only be
    stopped with SIGKILL.)"""
    import os
    import signal
    import threading

    def watchdog():
        time.sleep(grace)
        os._exit(128 + signal.SIGTERM)

    def handler(signum, frame):
        threading.Thread(target=watchdog, daemon=True).start()
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
