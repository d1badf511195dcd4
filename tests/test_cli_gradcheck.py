"""The ``bnjax gradcheck`` command prints every layer and input and exits 0 (1 when a row fails)."""

import bnjax.nn
from bnjax.nn import GradCheckRow
from bnjax.cli import main

LAYERS = {"batch_norm (N,D)": {"x", "scale", "bias"}, "batch_norm (N,H,W,C)": {"x", "scale", "bias"},
          "layer_norm": {"x", "scale", "bias"}, "dropout": {"x"}}


def test_gradcheck_command(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for layer, inputs in LAYERS.items():
        rows = [ln for ln in lines if ln.startswith(layer + " ")]
        assert {ln[len(layer):].split()[0] for ln in rows} == inputs and len(rows) == len(inputs), rows
        assert all(ln.rstrip().endswith("PASS") for ln in rows)
    assert "tolerance 1e-07: PASS" in out


def test_gradcheck_command_exits_1_when_a_row_fails(capsys, monkeypatch):
    # The exit-code logic on a failing row, without paying for a second full check.
    rows = [GradCheckRow("layer_a", "x", 1e-12, 1e-9, 1e-9), GradCheckRow("layer_b", "scale", 1e-12, 3e-5, 3e-5)]
    monkeypatch.setattr(bnjax.nn, "gradcheck_layers", lambda seed, h: rows)
    assert main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "layer_b" in out and "FAIL" in out
    assert "largest relative error: 3.00e-05 (layer_b, scale); tolerance 1e-07: FAIL" in out
