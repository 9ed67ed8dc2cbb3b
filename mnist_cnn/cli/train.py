r"""Training one run (the default mode), on one process or several (jax.distributed).

    python run.py --config=experiments/dbl_conv_relu.py --workdir=runs/x \
        --coordinator_address=HOST0:12345 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import os

from absl import flags

flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "host:port of process 0, for multi-process training with "
                    "jax.distributed (default: $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None,
                     "Processes in a multi-process run (default: $JAX_NUM_PROCESSES or 1).")
flags.DEFINE_integer("process_id", None,
                     "This process's index, 0..num_processes-1 (default: $JAX_PROCESS_ID "
                     "or 0). Only process 0 writes the run directory.")
flags.DEFINE_float("distributed_timeout", 120.0, "Seconds to wait for every process to "
                   "reach the coordinator before giving up with an error.")


def _env_int(name: str):
    from mnist_cnn import config as config_lib
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise config_lib.ConfigError(f"${name} must be an integer, got {value!r}") from None


def distributed_args(flags):
    """(coordinator address, process count, process id) for a multi-process run, from
    the flags or $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID;
    None for a single process."""
    from mnist_cnn import config as config_lib
    n = flags.num_processes if flags.num_processes is not None else _env_int(
        "JAX_NUM_PROCESSES")
    pid = flags.process_id if flags.process_id is not None else _env_int("JAX_PROCESS_ID")
    address = flags.coordinator_address
    n = 1 if n is None else n
    if n < 1:
        raise config_lib.ConfigError(f"--num_processes must be >= 1, got {n}")
    if n == 1:
        return None
    if not address:
        raise config_lib.ConfigError(f"--num_processes={n} needs --coordinator_address "
                                     f"(host:port of process 0)")
    if pid is None or not 0 <= pid < n:
        raise config_lib.ConfigError(f"--process_id must be in [0, {n - 1}] for "
                                     f"--num_processes={n}, got {pid}")
    if flags.distributed_timeout <= 0:
        raise config_lib.ConfigError("--distributed_timeout must be positive")
    return address, n, pid


def train_one(flags) -> int:
    from mnist_cnn import driver, parallel
    dist = distributed_args(flags)
    run = lambda: driver.run(flags.config, flags.workdir, overwrite=flags.overwrite,
                             progress=flags.progress)
    if not dist:
        run()
        return 0
    _, n, pid = dist
    if pid > 0:
        parallel.relay_stderr(pid, n)
    parallel.initialize_distributed(*dist, flags.distributed_timeout)
    watch = parallel.watch_peers(pid, n)
    if watch is None:
        run()
        return 0
    _run_watched(run, watch, pid, n)
    return 0


def _run_watched(run, watch, pid: int, n: int) -> None:
    """run() on process `pid` of `n`, watched: when it fails, the other processes are
    told why (they stop with one line naming this process and the cause) and this one
    ends without waiting for them; a signal, which every process stops on together
    (driver.StopFlag.agreed), and success end as usual."""
    from mnist_cnn import cli, driver
    try:
        run()
    except driver.Interrupted:
        watch.finish()
        raise
    except BaseException as e:
        user = isinstance(e, cli.user_errors())
        first = (str(e).strip().splitlines() or [""])[0]
        cause = first if user else f"{type(e).__name__}: {first}".rstrip(": ")
        watch.fail(cause, 2 if user else 1)
        raise
    watch.finish()
