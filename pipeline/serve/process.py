"""A `serve` process on a free loopback port, for the load tests and the benchmark: started, waited for
until it listens, and stopped with SIGTERM (killed only when it does not stop in time)."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from pipeline.errors import UserError

LISTENING = re.compile(r"on (http://\S+?)/ ")


class ServeProcess:
    def __init__(self, run, *flags, start_timeout_s=180, env=None):
        command = [sys.executable, "-m", "pipeline", "serve", "--run", str(run), "--host", "127.0.0.1",
                   "--port", "0", *map(str, flags)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **(env or {})})
        self.lines = queue.Queue()
        self.output = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_address(start_timeout_s)

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _wait_for_address(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            found = LISTENING.search(line)
            if found:
                return found.group(1)
        self.stop()
        raise UserError(f"serve did not start within {timeout_s} s; its output:\n{''.join(self.output)}")

    def terminate(self):
        """SIGTERM: the server stops taking requests, finishes those under way and exits."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s=60):
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def stop(self, timeout_s=60):
        if self.process.poll() is None:
            self.terminate()
        return self.wait(timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
