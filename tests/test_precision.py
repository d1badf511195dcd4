"""Matmul precision is explicit: ``precision`` of ``dense``/``Dense``, ``conv``/``Conv`` and ``MLPSpec`` reaches
every ``dot_general``/``conv_general_dilated`` of the forward and the backward (read from the jaxpr, as
``flax.linen.Dense(precision=...)`` passes it to ``lax.dot_general``), bad values are refused where they enter,
and ``train.matmul_precision`` is a checked config key. A CPU computes float32 whatever the setting, so what
is tested here is that the setting reaches the program; on an NVIDIA GPU ``None`` means TF32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax
from bnjax.train import TrainConfig

P = jax.lax.Precision
_PRIMITIVES = ("dot_general", "conv_general_dilated")
# What the jaxpr records for each accepted value (None: nothing, JAX's default at compile time).
CASES = [(None, None), ("default", P.DEFAULT), ("high", P.HIGH), ("highest", P.HIGHEST), (P.HIGH, P.HIGH)]


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def matmul_precisions(fn, *args) -> list:
    """The ``precision`` of every matmul and convolution in ``jax.make_jaxpr(fn)(*args)``, nested ones included:
    None, or the ``jax.lax.Precision`` of both operands (which must agree)."""
    out = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in _PRIMITIVES:
                p = eqn.params.get("precision")
                if isinstance(p, tuple):
                    assert p[0] == p[1], p
                    p = p[0]
                out.append(p)
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


def _forward_and_grad(apply, params, x):
    loss = lambda p, x: jnp.sum(apply(p, x) ** 2)  # noqa: E731
    fwd = matmul_precisions(apply, params, x)
    bwd = matmul_precisions(jax.grad(loss, argnums=(0, 1)), params, x)
    return fwd, bwd


@pytest.mark.parametrize("given, recorded", CASES, ids=[str(c[0]) for c in CASES])
def test_dense_precision_reaches_every_dot_forward_and_backward(key, given, recorded):
    params, _ = bnjax.dense_init(key, 3, 4)
    x = jnp.ones((2, 3))
    fwd, bwd = _forward_and_grad(lambda p, x: bnjax.dense(p, {}, x, True, precision=given)[0], params, x)
    assert fwd == [recorded] and len(bwd) == 3 and set(bwd) == {recorded}  # y, dx and dW
    layer = bnjax.Dense(3, 4, precision=given)
    fwd, bwd = _forward_and_grad(lambda p, x: layer.apply(p, {}, x, True)[0], params, x)
    assert fwd == [recorded] and set(bwd) == {recorded}


@pytest.mark.parametrize("impl", ["xla", "patches"])
@pytest.mark.parametrize("given, recorded", CASES, ids=[str(c[0]) for c in CASES])
def test_conv_precision_reaches_the_convolution_forward_and_backward(key, impl, given, recorded):
    params, _ = bnjax.conv_init(key, 2, 3, 3)
    x = jnp.ones((1, 5, 5, 2))
    fwd, bwd = _forward_and_grad(lambda p, x: bnjax.conv(p, {}, x, True, impl=impl, precision=given)[0], params, x)
    assert fwd == [recorded] and len(bwd) == 3 and set(bwd) == {recorded}
    layer = bnjax.Conv(2, 3, 3, impl=impl, precision=given)
    fwd, bwd = _forward_and_grad(lambda p, x: layer.apply(p, {}, x, True)[0], params, x)
    assert fwd == [recorded] and set(bwd) == {recorded}


@pytest.mark.parametrize("given, recorded", CASES, ids=[str(c[0]) for c in CASES])
def test_mlp_spec_precision_reaches_every_dense_layer(key, given, recorded):
    spec = bnjax.MLPSpec(in_features=3, hidden=(4, 5), num_classes=2, norm="batch", precision=given)
    assert spec.precision == (None if given is None else recorded.name.lower())  # stored by name: JSON-able
    model = bnjax.mlp(spec)
    params, stats = model.init(key)
    fwd, bwd = _forward_and_grad(lambda p, x: model.apply(p, stats, x, False)[0], params, jnp.ones((2, 3)))
    assert fwd == [recorded] * 3 and len(bwd) == 9 and set(bwd) == {recorded}


def test_precision_changes_the_program_not_the_float32_numbers_on_this_device(key):
    # On a CPU every precision computes in float32; the outputs agree to float32 rounding.
    params, _ = bnjax.dense_init(key, 30, 20)
    x = jax.random.normal(key, (8, 30))
    ys = [np.asarray(bnjax.dense(params, {}, x, False, precision=p)[0]) for p, _ in CASES]
    want = np.asarray(x, np.float64) @ np.asarray(params["weight"], np.float64).T
    if jax.default_backend() == "cpu":
        for y in ys:
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys[3], want, rtol=1e-5, atol=1e-6)  # "highest" is float32 on every device


BAD = ["fast", "HIGHEST", "float32", 1, True, ("highest", "highest")]


@pytest.mark.parametrize("bad", BAD, ids=[repr(b) for b in BAD])
def test_a_bad_precision_is_refused_where_it_enters(key, bad):
    params, _ = bnjax.dense_init(key, 3, 4)
    accepted = r"use None .*'default', 'high', 'highest' \(true float32\) or a jax\.lax\.Precision\."
    with pytest.raises(ValueError, match=r"Dense: precision=.* is not a matmul precision; " + accepted):
        bnjax.Dense(3, 4, precision=bad)
    with pytest.raises(ValueError, match=r"dense: precision=.* is not a matmul precision"):
        bnjax.dense(params, {}, jnp.ones((2, 3)), False, precision=bad)
    with pytest.raises(ValueError, match=r"Conv: precision=.* is not a matmul precision"):
        bnjax.Conv(2, 3, 3, precision=bad)
    cparams, _ = bnjax.conv_init(key, 2, 3, 3)
    with pytest.raises(ValueError, match=r"conv: precision=.* is not a matmul precision"):
        bnjax.conv(cparams, {}, jnp.ones((1, 4, 4, 2)), False, precision=bad)
    with pytest.raises(ValueError, match=r"MLPSpec: precision=.* is not a matmul precision; use one of "
                                         r"\('default', 'high', 'highest'\)"):
        bnjax.MLPSpec(precision=bad)
    with pytest.raises(ValueError, match=r"TrainConfig: matmul_precision=.* is not a matmul precision"):
        TrainConfig(matmul_precision=bad)


def test_train_matmul_precision_and_model_precision_are_checked_config_keys(tmp_path):
    from bnjax.run.config import ConfigError, load_config

    path = tmp_path / "configs" / "p.toml"
    path.parent.mkdir()
    path.write_text('[study]\nname = "p"\n')
    cfg = load_config(path, ["train.matmul_precision=highest", "model.precision=high"])
    assert cfg.variants[0].train.matmul_precision == "highest" and cfg.variants[0].model.precision == "high"
    assert TrainConfig().matmul_precision is None and bnjax.MLPSpec().precision is None
    with pytest.raises(ConfigError, match=r"train\.matmul_precision = 'fast' is not a matmul precision; use one of "
                                          r"\('default', 'high', 'highest'\)"):
        load_config(path, ["train.matmul_precision=fast"])
    with pytest.raises(ConfigError, match=r"model\.precision = 'float32' is not a matmul precision"):
        load_config(path, ["model.precision=float32"])


def test_the_highest_precision_fixture_reaches_the_compiled_program(highest_precision):
    # tests/conftest.py's fixture, which the tests comparing float32 with float64 or foreign references use.
    lowered = jax.jit(lambda a, b: a @ b).lower(jnp.ones((2, 2)), jnp.ones((2, 2))).as_text()
    assert "precision = [HIGHEST, HIGHEST]" in lowered
