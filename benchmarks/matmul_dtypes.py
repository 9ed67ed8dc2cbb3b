"""How fast this machine multiplies matrices in float32 and in bfloat16, at 2048^2 and at
the shapes of dbl_conv_relu's convolution products (micro-batches of 64 images).

    python benchmarks/matmul_dtypes.py [--repeats=20] [--out=matmul_dtypes.json]

For each shape (M, K) @ (K, N), jitted, median of `repeats` timed calls after a warm-up:
- float32: f32 operands, f32 result (what training uses);
- bf16 -> f32: bfloat16 operands, float32 accumulation and result
  (`preferred_element_type`), operands already bfloat16 (CPUs with AMX or AVX512-BF16
  can run this natively);
- cast + bf16 -> f32: f32 operands cast to bfloat16 inside the jitted function, as a
  training step would have to.
Prints a Markdown table (ms and GFLOP/s per form) and optionally writes it as JSON.
"""

from __future__ import annotations

import json
import statistics
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from mnist_cnn import bench  # noqa: E402

FLAGS = flags.FLAGS

# (what, M, K, N): dbl_conv_relu's products for 64 images (conv 1: 64*24*24 positions,
# 25-long patches, 20 maps; conv 2: 64*8*8 positions, 500-long patches, 40 maps).
SHAPES = (
    ("2048^2 (the ceiling's)", 2048, 2048, 2048),
    ("conv 2 forward", 4096, 500, 40),
    ("conv 2 input gradient", 4096, 40, 500),
    ("conv 1 forward", 36864, 25, 20),
)

BF16, F32 = jnp.bfloat16, jnp.float32


def forms():
    """{name: (jitted fn, operand dtype)}."""
    return {
        "float32": (jax.jit(lambda a, b: a @ b), F32),
        "bf16 -> f32": (jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=F32)),
                        BF16),
        "cast + bf16 -> f32": (jax.jit(lambda a, b: jnp.dot(
            a.astype(BF16), b.astype(BF16), preferred_element_type=F32)), F32),
    }


def time_ms(fn, a, b, repeats: int) -> float:
    fn(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(shapes=SHAPES, repeats: int = 20) -> list[dict]:
    rows = []
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    for what, m, k, n in shapes:
        a32 = jax.random.normal(key_a, (m, k), F32)
        b32 = jax.random.normal(key_b, (k, n), F32)
        row = dict(what=what, m=m, k=k, n=n)
        for name, (fn, dtype) in forms().items():
            ms = time_ms(fn, a32.astype(dtype), b32.astype(dtype), repeats)
            row[name] = dict(ms=round(ms, 4), gflop_s=round(2 * m * k * n / ms / 1e6, 1))
        rows.append(row)
    return rows


def table(rows) -> str:
    names = list(forms())
    head = "| product | M x K x N | " + " | ".join(f"{n} ms (GFLOP/s)" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    for r in rows:
        cells = " | ".join(f"{r[n]['ms']:.3f} ({r[n]['gflop_s']:,.0f})" for n in names)
        lines.append(f"| {r['what']} | {r['m']} x {r['k']} x {r['n']} | {cells} |")
    return "\n".join(lines)


def main(argv):
    del argv
    rows = measure(repeats=FLAGS.repeats)
    env = bench.environment()
    print(f"{env['cpu'] or env['device_kind']}, jax {env['jax']}:\n")
    print(table(rows))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(dict(environment=env, rows=rows), f, indent=1)


if __name__ == "__main__":
    flags.DEFINE_integer("repeats", 20, "Timed calls per point (median reported).")
    flags.DEFINE_string("out", "", "Also write the rows as JSON here.")
    app.run(main)
