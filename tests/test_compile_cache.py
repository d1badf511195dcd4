"""The CLI's persistent XLA compilation cache: on by default under $XDG_CACHE_HOME, off with a flag or env var."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnjax.launch._platform import CACHE_ENV, compile_cache_dir, compile_cache_wanted

CONFIG = """
[study]
name = "cache"
[data]
name = "synthetic"
loader = { num_samples = 120, num_features = 4, num_test = 20 }
num_val = 20
[model]
hidden = [4]
[train]
batch_size = 10
epochs = 1
eval_train_samples = 50
eval_batch_size = 50
[sweep]
seeds = [0]
"""


def test_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "bnjax" / "jax-compile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache_dir() == Path.home() / ".cache" / "bnjax" / "jax-compile"


def test_cache_wanted_unless_flag_or_env(monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert compile_cache_wanted(False) and not compile_cache_wanted(True)
    monkeypatch.setenv(CACHE_ENV, "0")
    assert not compile_cache_wanted(False)


@pytest.mark.parametrize("flag", [False, True])
def test_run_fills_the_cache_unless_turned_off(tmp_path, flag):
    cfg = tmp_path / "cache.toml"
    cfg.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != CACHE_ENV} | {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cmd = [sys.executable, "-m", "bnjax", "run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.run(cmd + (["--no-compile-cache"] if flag else []), env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "xdg" / "bnjax" / "jax-compile"
    entries = list(cache.iterdir()) if cache.is_dir() else []
    assert (len(entries) == 0) == flag, entries
