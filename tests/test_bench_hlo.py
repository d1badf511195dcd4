"""The kernel and pass counters read from compiled HLO text (bnjax/bench/_hlo.py)."""

import jax
import jax.numpy as jnp

from bnjax.bench._hlo import array_passes, computations, entry_name, fusion_counts, opcode


def _compiled(f, *args) -> str:
    return jax.jit(f).lower(*args).compile().as_text()


def test_opcode_reads_plain_and_tuple_types():
    assert opcode("  %add.1 = f32[4,8]{1,0} add(%p0, %p1), metadata={op_name=\"x\"}") == "add"
    assert opcode("  ROOT %w = (s32[], f32[2]{0}, /*index=2*/f32[3]{0}) while(%t), condition=%c, body=%b") == "while"
    assert opcode("  %f = f32[] fusion(f32[4]{0} %a), kind=kLoop, calls=%fc") == "fusion"
    assert opcode("HloModule jit_f, entry_computation_layout={(f32[4]{0})->f32[4]{0}}") == ""


def test_one_elementwise_pass_reads_and_writes_once():
    x = jnp.ones((64, 32))
    hlo = _compiled(lambda x: jnp.tanh(x) * 2.0 + 1.0, x)
    assert entry_name(hlo) in computations(hlo)
    assert array_passes(hlo, 64 * 32) == {"reads": 1, "writes": 1, "kernels": 1}
    # Two independent outputs of x: at least two writes and one read; a size nothing has: no pass at all.
    two = _compiled(lambda x: (jnp.sin(x), jnp.sum(x, axis=0)), x)
    assert array_passes(two, 64 * 32)["writes"] == 1 and array_passes(two, 64 * 32)["reads"] >= 1
    assert array_passes(two, 12345) == {"reads": 0, "writes": 0, "kernels": 0}


def test_fusion_counts_find_the_scan_body():
    def scan(x):
        def body(c, _):
            return jnp.tanh(c * 2.0) + jnp.sum(c), None

        return jax.lax.scan(body, x, None, length=7)[0]

    hlo = _compiled(scan, jnp.ones((16, 16)))
    found = fusion_counts(hlo, 7)
    assert found["loops"] == 1 and 1 <= found["loop_fusions"] <= found["fusions"]
    assert found["loop_ops"] >= found["loop_fusions"]
    assert fusion_counts(hlo, 8) == {"fusions": found["fusions"], "loops": 0, "loop_fusions": 0, "loop_ops": 0}
    # Unrolled by 7 there is no loop of 7 iterations left.
    assert fusion_counts(_compiled(lambda x: jax.lax.scan(lambda c, _: (jnp.tanh(c), None), x, None, length=7,
                                                          unroll=7)[0], jnp.ones((4,))), 7)["loops"] == 0
