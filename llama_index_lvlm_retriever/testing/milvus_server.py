"""A throwaway Milvus standalone server for tests and benchmarks: the ``milvus`` package's ``milvus-server``.

``pip install milvus`` (2.3.5, "embedded Milvus", in the ``test`` extra) ships a real Milvus standalone
server (with its etcd) as the ``milvus-server`` command. :class:`MilvusServer` starts it on free ports
with its data under a folder of yours, waits until a client gets its version, and stops it (and the
processes it started) again. It is what the suite's session fixture runs the backend tests against;
it is not meant for production.

Example:
    >>> with MilvusServer("/tmp/milvus-data") as server:  # doctest: +SKIP
    ...     kb = KnowledgeBase.build(items, embed, backend=MilvusBackendConfig(uri=server.uri))
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

COMMAND = "milvus-server"
# Every port the standalone server listens on: all free ones, so that several servers (other test
# sessions on the machine) never collide on Milvus's defaults (19530, 2379, ...). The embedded etcd
# ignores --etcd-port (it always listens on 2379/2380) unless given a config file of its own, which
# Milvus reads from $ETCD_CONFIG_PATH.
_PORT_OPTIONS = (
    "etcd-port",
    "root-coord-port",
    "proxy-port",
    "proxy-internal-port",
    "query-coord-port",
    "query-node-port",
    "index-coord-port",
    "index-node-port",
    "data-coord-port",
    "data-node-port",
)


class MilvusServerError(RuntimeError):
    """``milvus-server`` is not installed, or did not answer in time (the message has its log's tail)."""


def find_command() -> str | None:
    """Path of ``milvus-server`` (on ``PATH`` or beside this Python), or ``None`` when not installed."""
    beside = Path(sys.executable).parent / COMMAND
    return shutil.which(COMMAND) or (str(beside) if beside.is_file() else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusServer:
    """A Milvus standalone server on free local ports, its data in ``data_dir``.

    Args:
        data_dir: Folder for the server's data, its etcd config and its launcher's log (``server.log``;
            the server's own logs are in ``data/logs``); created if missing.
        startup_timeout: Seconds to wait for the server to answer (it takes ~10 s on 2 cores).

    Raises:
        MilvusServerError: (from :meth:`start`) not installed, exited, or no answer in time.
    """

    def __init__(self, data_dir: str | Path, *, startup_timeout: float = 180.0) -> None:
        self.data_dir = Path(data_dir)
        self.startup_timeout = startup_timeout
        self.ports = {option: _free_port() for option in _PORT_OPTIONS}
        self.ports["etcd-peer-port"] = _free_port()
        self.version: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``http://127.0.0.1:<proxy port>``, what ``MilvusBackendConfig(uri=...)`` takes."""
        return f"http://127.0.0.1:{self.ports['proxy-port']}"

    @property
    def pid(self) -> int | None:
        """Process id of the launcher, also the process group of every server process (``None`` when stopped)."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.data_dir / "server.log"

    def start(self) -> MilvusServer:
        """Start the server and wait until a client gets its version; returns ``self``."""
        command = find_command()
        if command is None:
            raise MilvusServerError(f"{COMMAND} is not installed; pip install milvus (in the test extra)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [command, "--data", str(self.data_dir / "data")]
        for option in _PORT_OPTIONS:
            args += [f"--{option}", str(self.ports[option])]
        client = f"http://127.0.0.1:{self.ports['etcd-port']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer-port']}"
        etcd_config = self.data_dir / "embed-etcd.yaml"
        etcd_config.write_text(
            f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n",
            encoding="utf-8",
        )
        env = {**os.environ, "ETCD_CONFIG_PATH": str(etcd_config), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            # Its own session: stop() ends the server and every process it started, and nothing else.
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started = time.monotonic()
        while True:
            if self._process.poll() is not None:
                raise MilvusServerError(f"{COMMAND} exited with code {self._process.returncode}; {self._log_tail()}")
            self.version = self._answer()
            if self.version is not None:
                logger.info("Milvus %s answers at %s after %.1f s", self.version, self.uri, time.monotonic() - started)
                return self
            if time.monotonic() - started > self.startup_timeout:
                self.stop()
                raise MilvusServerError(f"{COMMAND} did not answer at {self.uri} within {self.startup_timeout:.0f} s; {self._log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and its children: SIGTERM, then SIGKILL after 3 s (the data is throwaway,
        and Milvus's graceful stop takes longer than a test session should wait)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):  # the milvus binary outlives its launcher on SIGTERM
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _answer(self) -> str | None:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=2)
        except Exception:  # noqa: BLE001 - not up yet: pymilvus raises MilvusException or grpc errors
            return None
        try:
            return str(client.get_server_version())
        except Exception:  # noqa: BLE001 - same
            return None
        finally:
            client.close()

    def _log_tail(self, lines: int = 8) -> str:
        parts = []
        for path in (self.log_path, self.data_dir / "data" / "logs" / "milvus-stdout.log", self.data_dir / "data" / "logs" / "etcd.log"):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"last lines of {path}:\n" + "\n".join(line[:300] for line in tail))
        return "\n".join(parts) or "no log"

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


__all__ = ["COMMAND", "MilvusServer", "MilvusServerError", "find_command"]
