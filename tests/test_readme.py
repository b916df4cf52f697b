"""The README's commands work as written: they parse in a shell, name real commands and options,
compose valid configs, and the folders they point at are the folders the lab makes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from peftlab.config import compose
from tests.conftest import peftlab

README = Path(__file__).resolve().parents[1] / "README.md"


def command_lines() -> list[str]:
    """Every ``peftlab ...`` line of the README's bash blocks (continued lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    found = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():  # a trailing backslash continues the line
            line = line.strip()
            if line.startswith("peftlab"):
                found.append(line)
    return found


def commands() -> list[list[str]]:
    """Every ``peftlab ...`` line of the README's bash blocks, split as a POSIX shell would."""
    return [shlex.split(line, comments=True) for line in command_lines()]


def quoted_args(line: str) -> set[str]:
    """The arguments of one command line that are written inside quotes (as the shell receives them)."""
    raw = shlex.split(line, comments=True, posix=False)  # keeps the quotes, one token per argument
    return {t[1:-1] for t in raw if len(t) > 1 and t[0] == t[-1] and t[0] in "'\""}


def test_the_readme_shows_commands():
    assert len(commands()) >= 20


def test_no_argument_is_a_shell_pattern_or_redirection():
    for line in command_lines():
        quoted = quoted_args(line)
        for arg in shlex.split(line, comments=True):
            # unquoted, a shell would glob [..] (zsh refuses it) and take > or < as a redirection
            assert not re.search(r"(^|=)[^'\"]*\[[^\]]*\]", arg) or arg in quoted, line
            assert ">" not in arg and "<" not in arg or arg in quoted or _placeholder(arg), line


def test_a_quoted_argument_is_told_from_an_unquoted_one():
    assert quoted_args("peftlab train 'regularizer=[a,b]' x=[c]") == {"regularizer=[a,b]"}


def _placeholder(arg: str) -> bool:
    return bool(re.search(r"<[a-z-]+>", arg))


def test_every_train_command_of_the_tour_composes():
    tour = README.read_text().split("## A short tour", 1)[1].split("###", 1)[0]
    lines = [shlex.split(x.strip(), comments=True) for x in tour.splitlines() if x.strip().startswith("peftlab train")]
    assert len(lines) >= 5
    for argv in lines:
        overrides = [a for a in argv[2:] if not a.startswith("-") and not a.startswith("resume=")]
        compose(overrides)  # raises a one-line UserError on any unknown key or option


def test_every_command_exists(runs_dir):
    names = {argv[1] for argv in commands() if len(argv) > 1 and not argv[1].startswith("-")}
    result = peftlab("--help")
    for name in names:
        assert re.search(rf"\b{name}\b", result.stdout), f"README uses `peftlab {name}`, which --help does not list"


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_sweep_folder_the_readme_compares_is_the_one_the_readme_sweep_makes(runs_dir, shuffle):
    sweep = next(a for a in commands() if a[1] == "sweep" and "--jobs" in a)
    compare = next(a for a in commands() if a[1] == "compare" and "runs/sweeps/" in a[2] and "<" not in a[2])
    args = [a for a in sweep[2:] if "=" in a]
    if shuffle:  # folder names do not depend on the order of the arguments
        args = args[::-1]
    dry = peftlab("sweep", *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    name = re.search(r"sweep (\S+):", dry.stdout).group(1)
    assert compare[2] == f"runs/sweeps/{name}/v1"


def test_every_launch_line_runs_a_train_command_that_composes():
    """The multi-process lines (accelerate launch, torchrun, srun) end in `-m peftlab train ...`."""
    text = README.read_text().replace("\\\n", " ")
    launched = re.findall(r"-m peftlab train ([^\n']*)", text)
    assert len(launched) >= 4
    for tail in launched:
        compose([a for a in shlex.split(tail) if not a.startswith("-")])


def test_the_study_folder_the_readme_compares_is_the_one_the_readme_study_makes(runs_dir):
    study = next(a for a in commands() if a[1] == "study" and "--tune" in a)
    compare = next(a for a in commands() if a[1] == "compare" and "runs/studies/" in a[2])
    res = peftlab(*study[1:], "--dry-run")
    assert res.returncode == 0, res.stderr
    made = res.stdout.strip().splitlines()[-1].partition("study folder: ")[2]
    assert made.endswith(compare[2].replace("runs/studies/", "studies/").replace("/v1", "/v<N>"))
