"""Library calls with a wrong shape, dtype or option: one clear error that names the argument and the fix.

One row per distinct mistake, across every layer's public function (config and CLI errors are tested with
the runner). Each message must match its pattern and read as whole sentences.
"""

import jax
import jax.numpy as jnp
import pytest

import bnjax
from reference import assert_reads_well

X = jnp.ones((4, 5))
BN_P, BN_S = bnjax.batch_norm_init(5)
LN_P, _ = bnjax.layer_norm_init(5)
GN_P, _ = bnjax.group_norm_init(4)
RMS_P, _ = bnjax.rms_norm_init(5)
KEY = jax.random.key(0)


def bn(**kw):
    args = dict(params=BN_P, batch_stats=BN_S, x=X, train=True)
    args.update(kw)
    return lambda: bnjax.batch_norm(args.pop("params"), args.pop("batch_stats"), args.pop("x"), args.pop("train"),
                                    **args)


CASES = [
    # (id, exception, message pattern, call)
    ("bn-int-x", TypeError, r"batch_norm: x has dtype int32.*floating-point.*astype\(jnp.float32\)",
     bn(x=jnp.ones((4, 5), jnp.int32))),
    ("bn-complex-x", TypeError, r"batch_norm: x has dtype complex64.*real floating.*separate features",
     bn(x=jnp.ones((4, 5), jnp.complex64))),
    ("bn-scalar-x", ValueError, r"batch_norm: x is a scalar.*feature axis", bn(x=jnp.ones(()))),
    ("bn-axis-range", ValueError, r"batch_norm: axis=2 is out of range for an input of rank 2", bn(axis=2)),
    ("bn-axis-tuple", TypeError, r"batch_norm: axis=\(0, 1\) must be one int", bn(axis=(0, 1))),
    ("bn-params-shape", ValueError, r"params\['scale'\] has shape \(3,\), expected \(5,\).*batch_norm_init\(5\)",
     bn(params=bnjax.batch_norm_init(3)[0])),
    ("bn-stats-keys", ValueError, r"batch_stats has keys \['mean'\].*\(missing \['var'\]\)",
     bn(batch_stats={"mean": BN_S["mean"]})),
    ("bn-momentum", ValueError, r"momentum=1.5 is outside \[0.0, 1.0\]", bn(momentum=1.5)),
    ("bn-eps", ValueError, r"batch_norm: eps=-0.1 must be a concrete finite number >= 0", bn(eps=-0.1)),
    ("bn-eps-inf", ValueError, r"batch_norm: eps=inf must be a concrete finite number >= 0", bn(eps=float("inf"))),
    ("bn-average", ValueError, r"average='emma' is not a valid option.*'ema', 'cumulative', 'debiased'",
     bn(average="emma")),
    ("bn-grad", ValueError, r"grad='numeric' is not a valid option.*'analytic', 'autodiff'", bn(grad="numeric")),
    ("bn-mask-shape", ValueError, r"batch_norm: mask has shape \(3, 1\), which does not broadcast to "
     r"x.shape=\(4, 5\).*\(4, 1\) for whole rows", bn(mask=jnp.ones((3, 1), bool))),
    ("bn-mask-dtype", TypeError, r"batch_norm: mask has dtype complex64.*boolean",
     bn(mask=jnp.ones((4, 1), jnp.complex64))),
    ("bn-traced-train", TypeError, r"batch_norm: train=.*Python bool.*static_argnames='train'",
     bn(train=jnp.asarray(True))),
    ("bn-one-row", ValueError, r"1 value per feature.*batch of at least 2.*train=False", bn(x=jnp.ones((1, 5)))),
    ("bn-init", ValueError, r"batch_norm_init: num_features=0 must be a positive int",
     lambda: bnjax.batch_norm_init(0)),
    ("ln-axis", ValueError, r"layer_norm: axis=3 is out of range for an input of rank 2",
     lambda: bnjax.layer_norm(LN_P, {}, X, True, axis=3)),
    ("ln-axis-type", TypeError, r"layer_norm: axis='-1' must be an int or a sequence of ints",
     lambda: bnjax.layer_norm(LN_P, {}, X, True, axis="-1")),
    ("ln-mask-shape", ValueError, r"layer_norm: mask has shape \(4, 4\), which does not broadcast",
     lambda: bnjax.layer_norm(LN_P, {}, X, True, mask=jnp.ones((4, 4), bool))),
    ("ln-train", TypeError, r"layer_norm: train=None must be a Python bool",
     lambda: bnjax.layer_norm(LN_P, {}, X, None)),
    ("drop-rate-high", ValueError, r"dropout: rate=1.5 is outside \[0.0, 1.0\]",
     lambda: bnjax.dropout({}, {}, X, True, key=KEY, rate=1.5)),
    ("drop-rate-negative", ValueError, r"dropout: rate=-0.1 is outside \[0.0, 1.0\]",
     lambda: bnjax.dropout({}, {}, X, True, key=KEY, rate=-0.1)),
    ("drop-no-key", ValueError, r"dropout: train mode with rate=0.5 needs a PRNG key.*train=False",
     lambda: bnjax.dropout({}, {}, X, True, rate=0.5)),
    ("drop-broadcast-dims", ValueError, r"dropout: broadcast_dims=\(2,\) is out of range for an input of rank 2",
     lambda: bnjax.dropout({}, {}, X, True, key=KEY, rate=0.5, broadcast_dims=(2,))),
    ("drop-int-x", TypeError, r"dropout: x has dtype int32",
     lambda: bnjax.dropout({}, {}, jnp.ones((4, 5), jnp.int32), False)),
    ("gn-groups", ValueError, r"group_norm: num_groups=3 does not divide the 4 channels.*\[1, 2, 4\]",
     lambda: bnjax.group_norm(GN_P, {}, jnp.ones((2, 4)), True, num_groups=3)),
    ("gn-both", ValueError, r"group_norm: got both num_groups=2 and group_size=2; pass only one",
     lambda: bnjax.group_norm(GN_P, {}, jnp.ones((2, 4)), True, num_groups=2, group_size=2)),
    ("rms-params", ValueError, r"rms_norm: params\['scale'\] has shape \(5,\), expected \(4,\).*rms_norm_init",
     lambda: bnjax.rms_norm(RMS_P, {}, jnp.ones((2, 4)), True)),
    ("ghost-vbs", ValueError, r"ghost_batch_norm: virtual_batch_size=3 must be a positive int dividing the batch "
     r"size N=4", lambda: bnjax.ghost_batch_norm(BN_P, BN_S, X, True, virtual_batch_size=3)),
    ("renorm-rmax", ValueError, r"batch_renorm: rmax=0.5 is outside \[1.0, inf\]",
     lambda: bnjax.batch_renorm(BN_P, BN_S, X, True, rmax=0.5)),
]


@pytest.mark.parametrize("exc, pattern, call", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_library_call_errors(exc, pattern, call):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert_reads_well(str(info.value))


def test_the_table_names_distinct_mistakes():
    assert len({c[0] for c in CASES}) == len(CASES) >= 12
