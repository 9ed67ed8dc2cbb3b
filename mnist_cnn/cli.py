"""What run.py does with its parsed flags: list experiments, train one, benchmark, or
let finished runs vote.

User errors (config, data, run directory) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import itertools
import os
import sys

from mnist_cnn import config as config_lib
from mnist_cnn import committee, committee_config, data, driver, parallel

USER_ERRORS = (config_lib.ConfigError, data.DataError, driver.RunError,
               committee.CommitteeError)


def list_experiments() -> str:
    """Every experiment and committee file with the book's and the measured accuracy
    (results/results.csv)."""
    from mnist_cnn import report
    return report.list_text(report.load(), report.experiment_files())


def _env_int(name: str):
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


def _ints(name, values, lowest):
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise config_lib.ConfigError(f"--{name} must be integers, got {','.join(values)}") from None
    if not out or min(out) < lowest:
        raise config_lib.ConfigError(f"--{name} must be integers >= {lowest}, got "
                                     f"{','.join(values) or 'nothing'}")
    return out


def benchmark(flags) -> int:
    """--mode=benchmark: the sweep's Markdown table on stdout, every figure in JSON."""
    from mnist_cnn import bench
    try:
        batch_sizes = _ints("batch_sizes", flags.batch_sizes, 1)
        device_counts = _ints("device_counts", flags.device_counts, 1)
        micro_batches = _ints("micro_batches", flags.micro_batches, 0)
        if flags.bench_images < 1 or flags.repeats < 1:
            raise config_lib.ConfigError("--bench_images and --repeats must be positive")
        for bs in batch_sizes:   # every point checked before the first one is timed
            for impl in flags.conv_impls:
                for dtype in flags.dtypes:
                    for d, mb in itertools.product(device_counts, micro_batches):
                        c = bench.point_config(flags.config, bs, impl, dtype, d, mb)
                        parallel.setup(c, 1)
        result = bench.sweep(flags.config, batch_sizes, flags.conv_impls, flags.dtypes,
                             device_counts, flags.bench_images, flags.repeats,
                             flags.peak_tflops, log=lambda m: print(m, file=sys.stderr),
                             micro_batches=micro_batches)
    except (config_lib.ConfigError, parallel.ParallelError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(result["table"])
    driver.write_json_atomic(flags.benchmark_out, result)
    print(f"\nwrote {flags.benchmark_out}")
    return 0


def _exit_code(fn, *args) -> int:
    """Runs fn: user errors become one `error:` line and status 2, a signal 128+signum."""
    try:
        return fn(*args)
    except USER_ERRORS as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except driver.Interrupted as e:
        sys.stderr.write(f"{e}\n")
        return 128 + e.signum


def run_sweep(flags) -> int:
    """--sweep / --sweep_shard / --sweep_collect."""
    from mnist_cnn import sweep
    workdir = flags.workdir
    if flags.sweep_collect:
        axes = sweep.load_grid(workdir)
        if flags.sweep:
            sweep.check_grid(workdir, sweep.grid_record(
                flags.config, sweep.parse(flags.sweep, flags.config)))
        done, missing = sweep.write_outputs(workdir, axes)
        print(f"{done} point(s) finished, {missing} not yet; wrote "
              f"{os.path.join(workdir, 'sweep.md')}")
        return 0
    if not flags.sweep:
        raise sweep.SweepError("--sweep_shard needs the --sweep flags of the grid")
    axes = sweep.parse(flags.sweep, flags.config)
    shard, shards = sweep.parse_shard(flags.sweep_shard)
    grid = sweep.points(axes)
    configs = [sweep.apply(flags.config, p) for p in grid]   # all validated up front
    for c in configs:
        driver.build(c)
    driver.inspect_workdir(workdir, {}, True)                  # writable at all?
    sweep.check_grid(workdir, sweep.grid_record(flags.config, axes))
    mine = [i for i in range(len(grid)) if i % shards == shard]
    count = len(mine)
    if flags.sweep_vmap and sweep.vmappable(axes, flags.config) and len(mine) > 1:
        sweep.run_vmapped(flags.config, workdir, axes, mine, flags.overwrite,
                          flags.progress)
        mine = []
    for n, i in enumerate(mine):
        sub = os.path.join(workdir, sweep.point_dir(i, grid[i]))
        print(f"point {i + 1}/{len(grid)} ({n + 1} of {len(mine)} in this shard): "
              f"{', '.join(f'{k}={v}' for k, v in grid[i].items())} -> {sub}",
              flush=True)
        driver.run(configs[i], sub, overwrite=flags.overwrite, progress=flags.progress)
    if shards == 1:
        done, missing = sweep.write_outputs(workdir, axes)
        print(f"sweep finished: {done} points; {os.path.join(workdir, 'sweep.md')}")
    else:
        print(f"shard {shard}/{shards} finished its {count} point(s); run "
              f"--sweep_collect when every shard has finished")
    return 0


def main(flags) -> int:
    if flags.list:
        print(list_experiments())
        return 0
    if flags.mode == "vote":
        return _exit_code(vote, flags)
    if flags.config is None:
        sys.stderr.write("error: --config is required, e.g. --config=experiments/"
                         "dbl_conv_relu.py (python run.py --list shows them all)\n")
        return 2
    if committee_config.is_committee(flags.config):
        sys.stderr.write("error: --config names a committee file: vote it with "
                         "--mode=vote\n")
        return 2
    if flags.mode == "benchmark":
        return benchmark(flags)
    if not flags.workdir:
        sys.stderr.write("error: --workdir is required: the directory for this run's files\n")
        return 2
    if flags.sweep or flags.sweep_collect or flags.sweep_shard:
        return _exit_code(run_sweep, flags)
    return _exit_code(train_one, flags)


def _vote_plan(flags):
    """(networks to vote, committee.VoteOptions) from --vote_runs and the vote flags, or
    from a committee file given as --config (its members' saved outputs, its rule and
    views, which the flags may not change)."""
    own = lambda v: None if v < 0 else v   # negative: each run's own setting
    saving = dict(outputs_path=flags.vote_save_outputs,
                  outputs_precision=flags.vote_save_precision)
    if not committee_config.is_committee(flags.config):
        if flags.config is not None:
            raise config_lib.ConfigError("--mode=vote takes --vote_runs, or a committee "
                                         "file as --config (experiments/committees/)")
        return flags.vote_runs, committee.VoteOptions(
            eval_shifts=own(flags.vote_eval_shifts), eval_rotate=own(flags.vote_eval_rotate),
            eval_zoom=own(flags.vote_eval_zoom), select=flags.vote_select,
            rule=flags.vote_rule, **saving)
    fixed = [f"--{name}" for name in ("vote_runs", "vote_rule", "vote_select",
                                      "vote_eval_shifts", "vote_eval_rotate",
                                      "vote_eval_zoom") if flags[name].present]
    if fixed:
        raise config_lib.ConfigError(f"{', '.join(fixed)}: the committee file fixes its "
                                     f"members, rule and views; drop the flag")
    c = committee_config.validate(flags.config)
    return committee_config.outputs_paths(c), committee.VoteOptions(
        eval_shifts=c.eval_shifts, eval_rotate=c.eval_rotate, eval_zoom=c.eval_zoom,
        select="all", rule=c.rule, **saving)


def vote(flags) -> int:
    """--mode=vote: a committee of finished runs or saved outputs (mnist_cnn/committee.py)."""
    runs, options = _vote_plan(flags)
    result = committee.vote_runs(runs, log=lambda m: print(m, file=sys.stderr),
                                 options=options)
    print(committee.markdown(result))
    driver.write_json_atomic(flags.vote_out, result)
    print(f"\nwrote {flags.vote_out}"
          + (f" and {flags.vote_save_outputs}" if flags.vote_save_outputs else ""))
    return 0


def train_one(flags) -> int:
    dist = distributed_args(flags)
    if dist:
        parallel.initialize_distributed(*dist, flags.distributed_timeout)
    driver.run(flags.config, flags.workdir, overwrite=flags.overwrite, progress=flags.progress)
    return 0
