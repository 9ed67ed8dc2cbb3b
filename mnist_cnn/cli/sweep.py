r"""Sweeps: every point of a grid of config values a full run (docs/sweeps.md).

    python run.py --config=experiments/dbl_conv_relu.py --workdir=runs/sweep \
        --sweep=learning_rate=0.01,0.03,0.1 --sweep=l2=0,0.1,1 [--sweep_shard=i/N]
"""

from __future__ import annotations

import os

from absl import flags

flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: sweep a config field (repeat "
                          "for a grid); each point is a full run in a subdirectory of "
                          "--workdir.")
flags.DEFINE_bool("sweep_vmap", True, "Train a sweep's points together as one vmapped "
                  "program when only seed, learning_rate, l2, momentum and "
                  "layers[i].dropout vary.")
flags.DEFINE_string("sweep_shard", None, "i/N: run only the points with index % N == i.")
flags.DEFINE_bool("sweep_collect", False, "Build sweep.csv/.md/.png in --workdir from the "
                  "points every shard finished, without training.")


def collect(flags) -> int:
    """--sweep_collect: the tables from whatever points every shard finished."""
    from mnist_cnn import sweep
    axes = sweep.load_grid(flags.workdir)
    if flags.sweep:
        sweep.check_grid(flags.workdir, sweep.grid_record(
            flags.config, sweep.parse(flags.sweep, flags.config)))
    done, missing = sweep.write_outputs(flags.workdir, axes)
    print(f"{done} point(s) finished, {missing} not yet; wrote "
          f"{os.path.join(flags.workdir, 'sweep.md')}")
    return 0


def _prepare(flags):
    """(axes, grid, each point's validated config, this shard's point indices, shard,
    shards), every point checked and the workdir's grid record written before any
    training."""
    from mnist_cnn import driver, sweep
    if not flags.sweep:
        raise sweep.SweepError("--sweep_shard needs the --sweep flags of the grid")
    axes = sweep.parse(flags.sweep, flags.config)
    shard, shards = sweep.parse_shard(flags.sweep_shard)
    grid = sweep.points(axes)
    configs = [sweep.apply(flags.config, p) for p in grid]   # all validated up front
    for c in configs:
        driver.build(c)
    driver.inspect_workdir(flags.workdir, {}, True)            # writable at all?
    sweep.check_grid(flags.workdir, sweep.grid_record(flags.config, axes))
    mine = [i for i in range(len(grid)) if i % shards == shard]
    return axes, grid, configs, mine, shard, shards


def run_sweep(flags) -> int:
    """--sweep / --sweep_shard / --sweep_collect."""
    from mnist_cnn import driver, sweep
    if flags.sweep_collect:
        return collect(flags)
    axes, grid, configs, mine, shard, shards = _prepare(flags)
    count = len(mine)
    if flags.sweep_vmap and sweep.vmappable(axes, flags.config) and len(mine) > 1:
        sweep.run_vmapped(flags.config, flags.workdir, axes, mine, flags.overwrite,
                          flags.progress)
        mine = []
    for n, i in enumerate(mine):
        sub = os.path.join(flags.workdir, sweep.point_dir(i, grid[i]))
        print(f"point {i + 1}/{len(grid)} ({n + 1} of {len(mine)} in this shard): "
              f"{', '.join(f'{k}={v}' for k, v in grid[i].items())} -> {sub}",
              flush=True)
        driver.run(configs[i], sub, overwrite=flags.overwrite, progress=flags.progress)
    if shards == 1:
        done, missing = sweep.write_outputs(flags.workdir, axes)
        print(f"sweep finished: {done} points; {os.path.join(flags.workdir, 'sweep.md')}")
    else:
        print(f"shard {shard}/{shards} finished its {count} point(s); run "
              f"--sweep_collect when every shard has finished")
    return 0
