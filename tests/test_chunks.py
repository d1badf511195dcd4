"""A thousand members in one program: vmapped initialisation, member chunks (``TrainConfig.member_chunk``),
chunked checkpoints, and the errors of a chunk that does not fit.

References: the per-member initialisation (``init_train_state``, one member at a time), JAX's own seeding
(``jax.random.key``), and the unchunked run (all members in one call).
"""

import functools
import json

import jax
import numpy as np
import pytest
from train_helpers import TINY_MNIST1D_TOML, TOY_CFG, TOY_SPEC, toy_data

import bnjax
from bnjax._typing import FieldError
from bnjax import cli
from bnjax.train import Member, TrainConfig, init_ensemble, init_train_state, resolve_members, train_ensemble
from bnjax.train import _chunks
from bnjax.train._members import seed_key_data

# A diverging member (learning rate 1e30), dropout, and settings that differ per member.
MEMBERS = {
    "seed": [0, 1, 2, 3, 4],
    "learning_rate": [1e-2, 3e-3, 1e30, 2e-2, 5e-3],
    "dropout": [0.1, 0.0, 0.2, 0.3, 0.05],
    "bn_momentum": [0.9, 0.5, 0.99, 0.8, 0.7],
}
CFG = TOY_CFG.replace(epochs=3)


@functools.cache
def _unchunked(shared: bool = False):
    """The five members trained in one program (cached: several tests compare against it; results are read only)."""
    return train_ensemble(TOY_SPEC, CFG, toy_data(), MEMBERS, shared_batches=shared)


def _assert_same(a, b, *, exact: bool):
    check = np.testing.assert_array_equal if exact else (
        lambda x, y, err_msg="": np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=err_msg))
    assert a.members == b.members and sorted(a.history) == sorted(b.history)
    for k in a.history:
        check(a.history[k], b.history[k], err_msg=k)
    check(a.loss_history, b.loss_history)
    np.testing.assert_array_equal(a.diverged_step, b.diverged_step)
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
        check(x, y)


@pytest.mark.parametrize("seeds", [[0, 1, 7], [2**31 - 1, 2**31, 2**32 + 5, 12345678901]])
def test_seed_key_data_is_jax_seeding(seeds):
    got = seed_key_data(seeds)
    want = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in seeds])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("model", [TOY_SPEC, bnjax.serial(bnjax.Dense(6, 8), bnjax.BatchNorm(8),
                                                          bnjax.Activation(jax.nn.relu), bnjax.Dense(8, 3))])
def test_vmapped_init_equals_the_per_member_init_exactly(model):
    cfg = TOY_CFG.replace(optimizer="adamw", weight_decay=1e-4)
    given = {"seed": [3, 0, 9], "learning_rate": [1e-2, 2e-2, 3e-2]}
    if model is TOY_SPEC:
        given |= {"weight_scale": [0.1, 0.3, 0.05], "dropout": [0.0, 0.2, 0.5], "bn_momentum": [0.9, 0.5, 0.99]}
    members = resolve_members(model, cfg, given)
    stacked = jax.device_get(init_ensemble(model, cfg, members))
    for k, m in enumerate(members):
        alone = jax.device_get(init_train_state(model, cfg, **m.to_dict()))
        for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(alone), strict=True):
            np.testing.assert_array_equal(np.asarray(a)[k], np.asarray(b))
    # The members really differ (own seeds and scales).
    w = stacked.params["dense_0"]["weight"]
    assert not np.allclose(w[0], w[1])


def test_init_ensemble_takes_dicts_and_refuses_mixed_settings():
    a = init_ensemble(TOY_SPEC, TOY_CFG, [{"seed": 1}, {"seed": 2}])
    b = init_ensemble(TOY_SPEC, TOY_CFG, [Member(seed=1, weight_scale=0.3, dropout=0.0, bn_momentum=0.9),
                                          Member(seed=2, weight_scale=0.3, dropout=0.0, bn_momentum=0.9)])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    layer = bnjax.serial(bnjax.Dense(6, 3), bnjax.Dropout(0.1))
    with pytest.raises(ValueError, match="every member must set the same settings"):
        init_ensemble(layer, TOY_CFG, [Member(seed=0, dropout=0.2), Member(seed=1)])


@pytest.mark.parametrize("chunk", [2, 3, 4])  # 3, 2 (uneven: 3 + 2) and 2 chunks (4 + 1, the last padded)
@pytest.mark.parametrize("shared", [False, True])
def test_chunked_equals_unchunked(chunk, shared):
    data = toy_data()
    whole = _unchunked(shared)
    assert whole.diverged_step[2] >= 0 and (np.delete(whole.diverged_step, 2) == -1).all()
    said = []
    chunked = train_ensemble(TOY_SPEC, CFG.replace(member_chunk=chunk), data, MEMBERS, shared_batches=shared,
                             log=said.append)
    _assert_same(chunked, whole, exact=False)
    assert len(said) == 1 and f"{-(-5 // chunk)} chunk(s)" in said[0] and "member_chunk = " in said[0]


def test_auto_chunks_from_free_memory(monkeypatch):
    data = toy_data()
    whole = _unchunked()
    # Free memory that holds about two members' programs: "auto" splits the five members.
    one = _chunks.plan_chunks(5, "auto", 1, lambda w: 1000 * w)
    assert one.num_chunks == 1
    monkeypatch.setattr(_chunks, "free_memory", lambda device: (int(2.5 * 1000 / _chunks.MARGIN), "a test"))
    plan = _chunks.plan_chunks(5, "auto", 1, lambda w: 1000 * w)
    assert (plan.size, plan.calls, plan.num_chunks) == (2, ((0, 2), (2, 4), (4, 5)), 3)
    assert "5 members need" in plan.reason and "a test" in plan.reason
    # Every chunk's state stays on the device between calls: 5 members of 300 bytes leave 1000 of the 2500 bytes
    # for one call's working memory, 700 a member: 1 member; of 100 bytes, 2000 at 900 a member: 2.
    assert _chunks.plan_chunks(5, "auto", 1, lambda w: 1000 * w, 300).size == 1
    assert _chunks.plan_chunks(5, "auto", 1, lambda w: 1000 * w, 100).size == 2
    with pytest.raises(FieldError, match=r"member_chunk='auto' cannot help: the 5 members' states alone take"):
        _chunks.plan_chunks(5, "auto", 1, lambda w: 1000 * w, 1000)
    # The engine trains what the plan says (XLA's measured need and the toy's real state replaced by the figures
    # above, so the plan is the one just checked) and says so once.
    from bnjax.train import _calls

    real = _chunks.plan_chunks
    monkeypatch.setattr(_calls, "plan_chunks", lambda k, chunk, multiple, need, state: real(
        k, chunk, multiple, lambda w: 1000 * w, 0))
    said = []
    small = train_ensemble(TOY_SPEC, CFG, data, MEMBERS, log=said.append)
    _assert_same(small, whole, exact=False)
    assert said == [plan.reason] and "3 chunk(s) of at most 2" in plan.reason


class _Stop(Exception):
    pass


def test_resume_in_the_middle_of_a_chunked_run_is_bit_identical(tmp_path):
    data, cfg = toy_data(), CFG.replace(member_chunk=2)

    def stop_after_2(epoch, metrics):
        if epoch == 2:
            raise _Stop

    whole = train_ensemble(TOY_SPEC, cfg, data, MEMBERS)
    with pytest.raises(_Stop):
        train_ensemble(TOY_SPEC, cfg, data, MEMBERS, checkpoint_dir=tmp_path, callback=stop_after_2)
    seen = []
    resumed = train_ensemble(TOY_SPEC, cfg, data, MEMBERS, checkpoint_dir=tmp_path, resume=True,
                             callback=lambda e, m: seen.append(e))
    assert seen == [0, 1, 2, 3]
    _assert_same(resumed, whole, exact=True)
    # The chunking is a placement, not a result: the checkpoint also resumes unchunked.
    with pytest.raises(_Stop):
        train_ensemble(TOY_SPEC, cfg, data, MEMBERS, checkpoint_dir=tmp_path / "b", callback=stop_after_2)
    unchunked = train_ensemble(TOY_SPEC, CFG, data, MEMBERS, checkpoint_dir=tmp_path / "b", resume=True)
    _assert_same(unchunked, whole, exact=False)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "big", None])
def test_member_chunk_must_be_auto_or_a_positive_int(value):
    with pytest.raises(FieldError, match=r"member_chunk=.* must be 'auto' or a positive int"):
        TrainConfig(member_chunk=value)


def test_member_chunk_larger_than_the_members_is_refused():
    with pytest.raises(FieldError, match=r"member_chunk=6 is larger than the 5 members of this ensemble; use at "
                                         r"most 5"):
        train_ensemble(TOY_SPEC, CFG.replace(member_chunk=6), toy_data(), MEMBERS)


TINY = """
[study]
name = "tiny"
""" + TINY_MNIST1D_TOML + """
[model]
hidden = [8]
norm = "batch"

[train]
batch_size = 20
epochs = 2
eval_train_samples = 50

[sweep]
seeds = [0, 1, 2]
"""


@pytest.mark.parametrize("value, words", [
    ("0", ["train.member_chunk = 0", "'auto' or a positive int"]),
    ("-2", ["train.member_chunk = -2"]),
    ("1.5", ["train.member_chunk = 1.5"]),
    ("big", ["train.member_chunk = 'big'"]),
    ("4", ["train.member_chunk = 4", "larger than the 3 members"]),
])
def test_member_chunk_errors_name_the_key_and_write_nothing(value, words, tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "out"
    code = cli.main(["run", str(tmp_path / "tiny.toml"), "--out", str(out), "--quiet", "--no-compile-cache",
                     "--set", f"train.member_chunk={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert all(w in line for w in words), line
    assert not out.exists()


def test_a_chunk_out_of_memory_names_member_chunk_and_stays_resumable(tmp_path, capsys, monkeypatch):
    """The device running out of memory in the second epoch (simulated: XLA's RESOURCE_EXHAUSTED error) ends in
    one line naming train.member_chunk with a smaller value; the run resumes with it and finishes."""
    import dataclasses

    from bnjax.train import _calls

    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "out"
    real = _calls.compile_programs
    calls = []

    def compile_programs(spec):
        programs = real(spec)

        def epoch(*args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456 bytes.")
            return programs.epoch(*args)

        return dataclasses.replace(programs, epoch=epoch)

    monkeypatch.setattr(_calls, "compile_programs", compile_programs)
    argv = ["run", str(tmp_path / "tiny.toml"), "--out", str(out), "--quiet", "--no-compile-cache"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "train.member_chunk = 'auto' ran out of memory with 3 members per call" in err and "e.g. 1" in err
    assert "resume with:" in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(_calls, "compile_programs", real)
    assert cli.main([*argv, "--resume", "--set", "train.member_chunk=1"]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
