"""run.py for the tests without paying Python's imports at every start.

A plain `python run.py ...` spends about 2 CPU-seconds importing jax, flax, optax and
the package before it reads its first flag; the end-to-end tests start some 250 such
processes. `ForkServer` starts one Python process (this file run as a script) that
imports what every run.py process imports at start-up, then forks a child for each
request: the child takes the request's arguments, environment and output files and runs
run.py as `python run.py` would (as `__main__`, its exit code and signal reported
back). Modules a run loads later (orbax at its first checkpoint, matplotlib for figures,
the committee code) still load in the child, when the run needs them; what a real
process imports is tested on real processes (test_startup.py).

A request whose environment differs from the server's in anything JAX or the package
reads when imported is not forked: `run` answers None, and the caller starts a real
process. So is a request made while another is running (one child at a time).
"""

import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "run.py")
# Read when a run needs them, not when the server imports: a child may differ in these.
RUNTIME_ENV = ("MNIST_DATA_DIR", "MNIST_MIRROR", "MNIST_CNN_COMPILE_CACHE", "XDG_CACHE_HOME",
               "XLA_FLAGS")


def env_forkable(server_env: dict, env: dict) -> bool:
    """Whether a child with environment `env` runs as a fresh process would: it differs
    from the server's only in variables read at run time (or pytest's own)."""
    keys = set(server_env) | set(env)
    return all(server_env.get(k) == env.get(k) for k in keys
               if k not in RUNTIME_ENV and not k.startswith("PYTEST_"))


class ForkServer:
    """One server process; `run(args, env, timeout)` -> CompletedProcess, or None where
    the request must go to a real process."""

    def __init__(self):
        self._env = dict(os.environ)
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=self._env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buffer = b""
        self.ready = self._readline(600) == "ready"

    def _readline(self, timeout):
        """The server's next line, or None after `timeout` seconds without one."""
        while b"\n" not in self._buffer:
            if not select.select([self._proc.stdout], [], [], timeout)[0]:
                return None
            chunk = os.read(self._proc.stdout.fileno(), 4096)
            if not chunk:
                return ""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def run(self, args, env, timeout):
        if not (self.ready and env_forkable(self._env, env)):
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._run(list(args), env, timeout)
        finally:
            self._lock.release()

    def _run(self, args, env, timeout):
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            request = {"argv": [RUN_PY, *args], "env": env, "out": out, "err": err}
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            pid = int(self._readline(60))
            status = self._readline(timeout)
            timed_out = status is None
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                status = self._readline(60)
            with open(out) as f, open(err) as g:
                stdout, stderr = f.read(), g.read()
        cmd = [sys.executable, RUN_PY, *args]
        if timed_out:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(int(status)),
                                           stdout, stderr)

    def close(self):
        self._proc.stdin.close()
        self._proc.wait()


def _serve():
    """Answers requests until stdin closes: for each, the child's pid, then its wait
    status. Returns the request in the child."""
    sys.path[0] = ROOT
    os.chdir(ROOT)
    import mnist_cnn.main  # noqa: F401  (what run.py imports at start-up)
    import mnist_cnn.driver  # noqa: F401
    from jax._src import xla_bridge
    if xla_bridge._backends or threading.active_count() != 1:
        print("not forkable: a backend or a thread exists after the imports", flush=True)
        sys.exit(1)
    gc.freeze()   # the children leave these objects alone: no copying, a faster exit
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        print(pid, flush=True)
        print(os.waitpid(pid, 0)[1], flush=True)
    sys.exit(0)


def _become(request):
    """The child takes the request's environment, arguments and output files."""
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(os.devnull)
    sys.argv = request["argv"]


if __name__ == "__main__":
    _become(_serve())
    import runpy
    runpy.run_path(RUN_PY, run_name="__main__")
