"""Training progress: rank 0 reports over a socket, the driver (which owns the terminal) draws it.

Why a socket: under horovod.spark.run (and spark-submit on a cluster) a rank's stderr is a pipe that
Horovod forwards line by line with a ``[0]<stderr>:`` prefix, so a redrawn bar there becomes thousands of
lines and a terminal check in the rank is always false. The driver listens on a port (``ctx["progress"]``),
rank 0 sends one small JSON line at most every quarter second plus one per finished epoch, and the driver's
``display.Display`` draws one bar for the whole run: live on a terminal, a plain line every N seconds in a
pipe. A rank that cannot reach the driver falls back to a plain line every 10 s on its own stderr.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from typing import Any, Optional

log = logging.getLogger("sparkzoo.train")

_conn: dict[tuple[str, int], Optional[socket.socket]] = {}


def _send(address: Optional[tuple[str, int]], message: dict[str, Any]) -> bool:
    """One JSON line to the driver; False when there is no driver to talk to (then the caller prints)."""
    if not address:
        return False
    key = (str(address[0]), int(address[1]))
    sock = _conn.get(key, 0)
    if sock == 0:
        try:
            sock = socket.create_connection(key, timeout=5)
        except OSError:
            sock = None
        _conn[key] = sock
    if sock is None:
        return False
    try:
        sock.sendall((json.dumps(message) + "\n").encode())
        return True
    except OSError:
        _conn[key] = None
        return False


def note(address: Optional[tuple[str, int]], text: str) -> None:
    """A line the user should see on the driver's terminal (an epoch's figures)."""
    _send(address, {"note": text})


class EpochProgress:
    """Rank side: steps of one epoch, sent to the driver (or printed every ``interval`` s without one)."""

    def __init__(self, epoch: int, epochs: int, steps: int, samples_per_step: int, enabled: bool,
                 interval: float = 10.0, address: Optional[tuple[str, int]] = None) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.samples_per_step = samples_per_step
        self.enabled = enabled
        self.interval = interval
        self.address = address
        self.start = self.last = self.sent = time.time()
        self.done = 0

    def update(self, loss: float) -> None:
        self.done += 1
        if not self.enabled:
            return
        now = time.time()
        rate = self.done * self.samples_per_step / max(now - self.start, 1e-9)
        if self.address and (now - self.sent >= 0.25 or self.done == self.steps):
            self.sent = now
            if _send(self.address, {"epoch": self.epoch, "epochs": self.epochs, "done": self.done,
                                    "steps": self.steps, "loss": loss, "rate": rate}):
                return
            self.address = None   # the driver went away: plain lines from here on
        if not self.address and now - self.last >= self.interval:
            self.last = now
            eta = (self.steps - self.done) * (now - self.start) / self.done
            print(f"[sparkzoo] epoch {self.epoch + 1}/{self.epochs} step {self.done}/{self.steps} "
                  f"({100 * self.done / self.steps:.0f}%) loss={loss:.3f} {rate:.0f} samples/s ETA {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to release: the connection lives for the rank's whole run."""


class TrainDisplay:
    """Driver side: listen for rank 0, draw one bar over every epoch's steps."""

    def __init__(self, bind_host: str = "127.0.0.1", advertise: str = "127.0.0.1") -> None:
        from ..display import Display

        self.display = Display("train", unit="step")
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind((bind_host, 0))
        self.server.listen(4)
        self.server.settimeout(0.5)
        self.address = (advertise, self.server.getsockname()[1])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="sparkzoo-train-progress", daemon=True)

    def __enter__(self) -> "TrainDisplay":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.server.close()
        self.display.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            conn.settimeout(0.5)
            while not self.stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    try:
                        self.handle(json.loads(line))
                    except ValueError:
                        log.debug("progress: not a JSON line from rank 0: %r", line[:200])

    def handle(self, m: dict[str, Any]) -> None:
        if "note" in m:
            self.display.note(str(m["note"]))
            return
        total = int(m["epochs"]) * int(m["steps"])
        position = int(m["epoch"]) * int(m["steps"]) + int(m["done"])
        self.display.update(position, total, f"epoch {int(m['epoch']) + 1}/{m['epochs']} loss {m['loss']:.3f} "
                                             f"{m['rate']:.0f} samples/s")


def driver_display(spark=None) -> TrainDisplay:
    """Listen where the ranks can reach the driver: loopback for a local master, the driver host otherwise."""
    local = spark is None or spark.sparkContext.master.startswith("local")
    if local:
        return TrainDisplay("127.0.0.1", "127.0.0.1")
    host = spark.conf.get("spark.driver.host", None) or socket.getfqdn()
    return TrainDisplay("0.0.0.0", host)
