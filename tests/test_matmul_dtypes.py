"""benchmarks/matmul_dtypes.py: each timed form computes the product it names."""

import numpy as np

from benchmarks import matmul_dtypes


def test_every_form_is_the_product_to_its_precision():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(24, 40)).astype(np.float32), rng.normal(size=(40, 16)).astype(
        np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    for name, (fn, dtype) in matmul_dtypes.forms().items():
        got = np.asarray(fn(np.asarray(a).astype(dtype), np.asarray(b).astype(dtype)))
        assert got.dtype == np.float32, name
        # float32 to float32 rounding; bfloat16 operands carry 8 significant bits
        tol = 1e-4 if name == "float32" else 3e-2
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
        if name != "float32":   # really rounded to bfloat16, not computed in float32
            assert np.abs(got - a @ b).max() > 1e-4


def test_measure_and_table():
    rows = matmul_dtypes.measure(shapes=(("tiny", 16, 32, 8),), repeats=2)
    assert rows[0]["m"] == 16 and all(rows[0][n]["ms"] > 0 for n in matmul_dtypes.forms())
    text = matmul_dtypes.table(rows)
    assert text.count("\n") == 2 and "| tiny | 16 x 32 x 8 |" in text
