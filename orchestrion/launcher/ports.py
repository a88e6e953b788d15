"""Port choice: stable across restarts of one data dir, distinct between data dirs.

Weaviate's Raft log remembers its own address, so the embedded stack must find
its ports again after a restart; they are kept in ``<data_dir>/ports.json``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from core.errors import ServiceStartError

PORTS_FILE = "ports.json"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PortBook:
    """Ports by service role, remembered per data dir."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / PORTS_FILE
        try:
            self._ports: dict[str, int] = json.loads(self._path.read_text())
        except (OSError, ValueError):
            self._ports = {}
        self._taken: set[int] = set()

    def require(self, role: str, port: int, setting: str, host: str = "127.0.0.1") -> int:
        """A port the user chose: it must be free."""
        if not port_free(port, host):
            raise ServiceStartError(
                f"port {port} for {role} is in use on {host}: stop what listens there "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or set {setting} to another port (0 picks a free one)"
            )
        return self._keep(role, port)

    def prefer(self, role: str, preferred: int | None = None, span: int = 1) -> int:
        """The remembered port, else `preferred`, else any free one; `span` ports in a row must be free."""
        for candidate in (self._ports.get(role), preferred):
            if candidate and self._run_free(candidate, span):
                return self._keep(role, candidate)
        for _ in range(200):
            candidate = _any_free_port()
            if self._run_free(candidate, span):
                return self._keep(role, candidate)
        raise ServiceStartError(f"found no {span} free consecutive port(s) for {role} on 127.0.0.1")

    def save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(self._ports, indent=2, sort_keys=True))

    def _run_free(self, first: int, span: int) -> bool:
        ports = range(first, first + span)
        return all(p <= 65535 and p not in self._taken and port_free(p) for p in ports)

    def _keep(self, role: str, port: int) -> int:
        self._ports[role] = port
        self._taken.add(port)
        return port
