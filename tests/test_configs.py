"""Every config in configs/ composes, and the CLI lists each option with its description."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peftlab.config import compose, config_dir, describe_options, list_option_names
from tests.conftest import peftlab

GROUP_OPTIONS = [(g, o) for g in ("task", "model", "dataset", "method", "regularizer", "optimizer", "trainer")
                 for o in list_option_names(g)]
NEEDS = {("model", "hf"): ["model.name=some/model"], ("dataset", "hf"): ["dataset.path=some/data"],
         ("dataset", "sft"): ["dataset.path=some/data"]}


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_option_composes(group, option):
    override = f"{group}=[{option}]" if group == "regularizer" else f"{group}={option}"
    cfg = compose([override, *NEEDS.get((group, option), [])])
    node = cfg[group][option] if group == "regularizer" else cfg[group]
    if group != "trainer":
        assert "_target_" in node
    assert str(node.get("description", "")).strip(), f"{group}/{option} needs a one-line description"


def test_methods_name_their_paper():
    for row in describe_options("method"):
        assert row["paper"].strip(), row["name"]


def test_configs_ship_next_to_the_package_or_in_the_repo():
    assert (config_dir() / "config.yaml").is_file()


@pytest.mark.parametrize("kind", ["methods", "models", "datasets", "regularizers"])
def test_ls_lists_every_option(kind):
    result = peftlab("ls", kind)
    assert result.returncode == 0
    group = {"methods": "method", "models": "model", "datasets": "dataset", "regularizers": "regularizer"}[kind]
    for name in list_option_names(group):
        assert name in result.stdout


def test_cli_imports_no_heavy_library():
    code = ("import sys, peftlab.cli; heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate', "
            "'matplotlib') if m in sys.modules]; print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_lists_the_commands():
    result = peftlab("--help")
    assert result.returncode == 0
    for command in ("train", "runs", "show", "ls", "compare", "analyze"):
        assert command in result.stdout
