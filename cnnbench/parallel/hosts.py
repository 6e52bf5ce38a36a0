"""Multi-host start-up that fails in one line: check the process numbering, and gather every process
at the coordinator (a TCP check-in on the port after JAX's) within a bounded time before JAX's own
rendezvous, which otherwise waits five minutes and then aborts the process from C++."""

from __future__ import annotations

import socket
import time

from cnnbench.errors import UsageError

DEFAULT_TIMEOUT = 30.0  # seconds every process waits for the others


def check_numbering(num_processes: int | None, process_id: int | None) -> None:
    if num_processes is not None and num_processes < 1:
        raise UsageError(f"--num-processes must be at least 1, not {num_processes}")
    if process_id is not None and process_id < 0:
        raise UsageError(f"--process-id must be at least 0, not {process_id}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise UsageError(f"--process-id {process_id} is not one of the {num_processes} processes "
                         f"(--process-id 0 to {num_processes - 1})")


def _address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise UsageError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), not {coordinator!r}")
    return host.strip("[]"), int(port)


def _how(coordinator: str, num_processes: int) -> str:
    return (f"start each with --coordinator {coordinator} --num-processes {num_processes} --process-id I "
            f"(I = 0..{num_processes - 1}) and the same --run-dir on a shared file system, or raise --init-timeout")


def check_in(coordinator: str, num_processes: int, process_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Return once all ``num_processes`` processes have reached the coordinator (port + 1 of
    ``coordinator``); a :class:`UsageError` after ``timeout`` seconds says who is missing."""
    host, port = _address(coordinator)
    if num_processes == 1:
        return
    deadline = time.monotonic() + timeout
    if process_id == 0:
        _gather(port + 1, num_processes, deadline, coordinator, timeout)
    else:
        _report(host, port + 1, process_id, num_processes, deadline, coordinator, timeout)


def _gather(port: int, num_processes: int, deadline: float, coordinator: str, timeout: float) -> None:
    try:
        server = socket.create_server(("", port), reuse_port=False)
    except OSError as e:
        raise UsageError(f"process 0 cannot listen on port {port} (the check-in port after {coordinator}): "
                         f"{e.strerror or e}; choose another --coordinator port") from None
    joined, waiting = {0}, []
    try:
        while len(joined) < num_processes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = ", ".join(str(i) for i in range(num_processes) if i not in joined)
                raise UsageError(f"only {len(joined)} of {num_processes} processes joined {coordinator} within "
                                 f"{timeout:g} s (missing --process-id {missing}); {_how(coordinator, num_processes)}")
            server.settimeout(remaining)
            try:
                conn, _ = server.accept()
            except (socket.timeout, TimeoutError):
                continue
            conn.settimeout(max(remaining, 0.1))
            try:
                joined.add(int(conn.recv(16).decode().strip()))
                waiting.append(conn)
            except (OSError, ValueError):
                conn.close()
        for conn in waiting:
            conn.sendall(b"go\n")
    finally:
        for conn in waiting:
            conn.close()
        server.close()


def _report(host: str, port: int, process_id: int, num_processes: int, deadline: float, coordinator: str,
            timeout: float) -> None:
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
                conn.sendall(f"{process_id}\n".encode())
                conn.settimeout(max(deadline - time.monotonic(), 0.1))
                if conn.recv(8).startswith(b"go"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
