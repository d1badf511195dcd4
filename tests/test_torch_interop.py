"""PyTorch state-dict converters, checked against torch's own BatchNorm/LayerNorm outputs and updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax.interop.torch import (
    bnjax_momentum_to_torch,
    from_torch_batch_norm,
    from_torch_layer_norm,
    to_torch_batch_norm,
    torch_momentum_to_bnjax,
)
from bnjax.nn._batch_norm import batch_norm
from bnjax.nn._layer_norm import layer_norm


def test_momentum_helpers():
    assert torch_momentum_to_bnjax(0.1) == pytest.approx(0.9)
    assert bnjax_momentum_to_torch(0.99) == pytest.approx(0.01)
    assert torch_momentum_to_bnjax(None) is None and bnjax_momentum_to_torch(None) is None
    assert bnjax_momentum_to_torch(torch_momentum_to_bnjax(0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"momentum=1.5 must be in \[0, 1\]"):
        torch_momentum_to_bnjax(1.5)


def test_from_torch_batch_norm_numpy_state_dict_without_torch():
    sd = {
        "bn.weight": np.array([1.0, 2.0], np.float32), "bn.bias": np.array([0.5, -0.5], np.float32),
        "bn.running_mean": np.array([0.1, 0.2], np.float32), "bn.running_var": np.array([1.5, 2.5], np.float32),
        "bn.num_batches_tracked": np.array(7),
    }
    params, stats, options = from_torch_batch_norm(sd, prefix="bn.", momentum=0.2, eps=1e-3)
    np.testing.assert_array_equal(params["scale"], [1.0, 2.0])
    np.testing.assert_array_equal(stats["var"], [1.5, 2.5])
    assert options == {"eps": 1e-3, "unbiased_var": True, "momentum": pytest.approx(0.8)}
    _, stats_c, options_c = from_torch_batch_norm(sd, prefix="bn.", momentum=None)
    assert options_c["average"] == "cumulative" and int(stats_c["count"]) == 7 and "momentum" not in options_c
    back = to_torch_batch_norm(params, stats_c, prefix="bn.")
    assert set(back) == set(sd) and int(back["bn.num_batches_tracked"]) == 7
    with pytest.raises(ValueError, match="track_running_stats=False"):
        from_torch_batch_norm({"weight": np.ones(2), "bias": np.zeros(2)})
    with pytest.raises(ValueError, match="elementwise_affine=False"):
        from_torch_layer_norm({})


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _randomise_bn(torch, bn, rng):
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2, c).astype(np.float32)))
        bn.bias.copy_(torch.from_numpy(rng.randn(c).astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(rng.randn(c).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 3, c).astype(np.float32)))
        bn.num_batches_tracked.fill_(3)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_batch_norm_1d_eval_and_train_step_match_torch(torch, momentum):
    rng = np.random.RandomState(0)
    bn = torch.nn.BatchNorm1d(5, momentum=momentum, eps=1e-4)
    _randomise_bn(torch, bn, rng)
    params, stats, options = from_torch_batch_norm(bn.state_dict(), momentum=momentum, eps=1e-4)
    x = (2 * rng.randn(8, 5) + 1).astype(np.float32)

    bn.eval()
    with torch.no_grad():
        y_eval = bn(torch.from_numpy(x)).numpy()
    y, _ = batch_norm(params, stats, jnp.asarray(x), False, **options)
    np.testing.assert_allclose(y, y_eval, rtol=1e-5, atol=1e-5)

    bn.train()
    xt = torch.from_numpy(x).requires_grad_(True)
    out = bn(xt)
    dy = rng.randn(8, 5).astype(np.float32)
    out.backward(torch.from_numpy(dy))
    y, new = batch_norm(params, stats, jnp.asarray(x), True, **options)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    # The running statistics continue exactly as torch's (unbiased variance, inverse momentum, or count).
    np.testing.assert_allclose(new["mean"], bn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new["var"], bn.running_var.numpy(), rtol=1e-6, atol=1e-6)
    if momentum is None:
        assert int(new["count"]) == int(bn.num_batches_tracked) == 4

    dx = jax.grad(lambda x: jnp.sum(batch_norm(params, stats, x, True, **options)[0] * dy))(jnp.asarray(x))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)

    # And back: torch loads bnjax's updated state and evaluates identically.
    bn2 = torch.nn.BatchNorm1d(5, momentum=momentum, eps=1e-4)
    bn2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in to_torch_batch_norm({"scale": params["scale"], "bias": params["bias"]}, new).items()})
    bn2.eval()
    with torch.no_grad():
        y2 = bn2(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(batch_norm(params, new, jnp.asarray(x), False, **options)[0], y2, rtol=1e-5, atol=1e-5)


def test_batch_norm_2d_channels_first_matches_torch(torch):
    rng = np.random.RandomState(1)
    bn = torch.nn.BatchNorm2d(3)
    _randomise_bn(torch, bn, rng)
    params, stats, options = from_torch_batch_norm(bn.state_dict())
    x = rng.randn(2, 3, 4, 4).astype(np.float32)
    out = bn.train()(torch.from_numpy(x)).detach().numpy()
    y, new = batch_norm(params, stats, jnp.asarray(x), True, axis=1, **options)
    np.testing.assert_allclose(y, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["var"], bn.running_var.numpy(), rtol=1e-6)


@pytest.mark.parametrize("shape,bias", [((6,), True), ((3, 6), False)])
def test_layer_norm_matches_torch(torch, shape, bias):
    rng = np.random.RandomState(2)
    ln = torch.nn.LayerNorm(shape, bias=bias)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(rng.randn(*shape).astype(np.float32)))
        if bias:
            ln.bias.copy_(torch.from_numpy(rng.randn(*shape).astype(np.float32)))
    params, stats, options = from_torch_layer_norm({"ln." + k: v for k, v in ln.state_dict().items()}, prefix="ln.")
    x = (2 * rng.randn(4, *shape) + 1).astype(np.float32)
    with torch.no_grad():
        ref = ln(torch.from_numpy(x)).numpy()
    y, _ = layer_norm(params, stats, jnp.asarray(x), True, **options)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
