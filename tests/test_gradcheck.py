"""Tests of bnjax/nn/_gradcheck.py: rel_error, finite differences and the per-layer three-way check."""

import numpy as np
import pytest

import bnjax


def test_rel_error_known_values():
    assert bnjax.rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert bnjax.rel_error([1.0], [3.0]) == pytest.approx(0.5)  # |1 - 3| / (1 + 3)
    assert bnjax.rel_error([[1.0, 10.0]], [[1.0, 11.0]]) == pytest.approx(1 / 21)  # the max over elements
    assert bnjax.rel_error([0.0], [1e-9]) == pytest.approx(0.1)  # denominator floored at 1e-8
    assert bnjax.rel_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    with pytest.raises(ValueError, match=r"rel_error: shapes differ, a\(2,\) vs b\(3,\)"):
        bnjax.rel_error(np.zeros(2), np.zeros(3))


def test_numeric_grad_of_quadratic_is_exact():
    r = np.random.RandomState(70)
    a, b, x = r.randn(4, 4), r.randn(4), r.randn(4)
    x_before = x.copy()
    g = bnjax.numeric_grad(lambda z: 0.5 * z @ a @ z + b @ z, x)
    np.testing.assert_allclose(g, 0.5 * (a + a.T) @ x + b, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(x, x_before)  # the input is not modified


def test_numeric_vjp_of_linear_map():
    r = np.random.RandomState(71)
    m, x, dy = r.randn(3, 5), r.randn(5), r.randn(3)
    np.testing.assert_allclose(bnjax.numeric_vjp(lambda z: m @ z, x, dy), m.T @ dy, rtol=1e-8, atol=1e-9)


def test_gradcheck_layers_all_below_tolerance():
    rows = bnjax.gradcheck_layers()
    seen = {(r.layer, r.input) for r in rows}
    for layer in ("batch_norm (N,D)", "batch_norm (N,H,W,C)", "layer_norm"):
        assert {(layer, k) for k in ("x", "scale", "bias")} <= seen
    assert ("dropout", "x") in seen
    for r in rows:
        print(f"{r.layer:<22} {r.input:<6} {r.analytic_vs_autodiff:.2e} {r.analytic_vs_numeric:.2e} "
              f"{r.autodiff_vs_numeric:.2e}")
        assert r.analytic_vs_autodiff <= 1e-10, r
        assert r.worst <= 1e-7, r
    table = bnjax.nn.format_gradcheck(rows, tol=1e-7)
    assert table.count("PASS") == len(rows) and "FAIL" not in table
    assert bnjax.nn.format_gradcheck(rows, tol=0.0).count("FAIL") >= 1


def test_numeric_grad_of_a_transposed_array():
    # A Fortran-ordered input (a transpose) must be nudged in place like any other: d/dx sum(x**2) = 2x.
    x = np.arange(6.0).reshape(2, 3).T
    np.testing.assert_allclose(bnjax.numeric_grad(lambda v: float(np.sum(v**2)), x), 2 * x, rtol=1e-8)
