"""The README's commands stay runnable as written: every ``defpert`` command in its code
blocks parses, and its test command is exactly the one ``.ci/run`` runs."""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from defpert.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "tools"))
from walk_readme import code_block_lines, run_on_a_terminal, walkable, without_comment  # noqa: E402


def defpert_argvs(line: str) -> list[list[str]]:
    """Each ``defpert`` invocation on a shell line as argv lists (after ``defpert``).

    A synopsis line's optional ``[...]`` parts are kept, and ``a|b|c`` alternatives give
    one argv per alternative, so every form the README offers is checked."""
    argvs = []
    for part in without_comment(line).split("&&"):
        words = shlex.split(part.replace("[", " ").replace("]", " "))
        starts = [i for i, w in enumerate(words) if w == "defpert" or w.endswith("/bin/defpert")]
        if not starts:
            continue
        words = words[starts[0] + 1 :]
        choices = [w.split("|") for w in words]
        argvs.extend(list(combo) for combo in itertools.product(*choices))
    return argvs


def readme_commands() -> list[list[str]]:
    return [argv for line in code_block_lines(README.read_text()) for argv in defpert_argvs(line)]


def test_the_readme_has_its_commands():
    commands = readme_commands()
    names = {argv[0] for argv in commands}
    assert {"data", "train", "models", "dp", "tsne", "sweep", "reproduce"} <= names
    assert len(commands) >= 20


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv)[:80])
def test_every_readme_command_parses(argv, capsys):
    try:
        build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse's refusal: an unknown flag, a bad choice or type
        pytest.fail(f"defpert {' '.join(argv)}: {capsys.readouterr().err.strip()} (exit {stop})")


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = [line for line in code_block_lines(README.read_text()) if "pytest" in line]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [line for line in ci_lines if "pytest" in line and not line.startswith("#")]
    assert len(readme) == 1 and readme == ci


def test_a_command_with_a_flag_defpert_lacks_is_caught():
    (argv,) = defpert_argvs("defpert dp -p linf --no-such-flag 3  # a comment")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_the_walk_takes_the_lines_a_user_would_type():
    lines = [line for line in code_block_lines(README.read_text()) if walkable(line, False)]
    assert any(line.startswith("defpert dp ") for line in lines)
    assert not any("[" in line or "HOST0" in line or "python3 -m venv" in line for line in lines)


def test_the_walk_records_a_terminal_command_and_interrupts_one_past_its_cap():
    env = dict(os.environ)
    done = run_on_a_terminal("test -t 2 && echo on-a-terminal", env, cap=30)
    assert done["exit"] == 0 and done["last_lines"] == ["on-a-terminal"]
    assert not done["interrupted_at_cap"]
    capped = run_on_a_terminal("echo started; sleep 30", env, cap=1)
    assert capped["interrupted_at_cap"] and capped["exit"] != 0 and capped["seconds"] < 20


def test_the_walk_terminal_has_a_size_and_ctrl_c_reaches_the_command():
    sized = run_on_a_terminal("stty size", dict(os.environ), cap=30)
    assert sized["last_lines"] == ["40 120"]  # progress bars need a width to draw
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup … &`
    try:
        capped = run_on_a_terminal("exec sleep 30", dict(os.environ), cap=1)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert capped["interrupted_at_cap"] and capped["seconds"] < 20  # not the SIGKILL at 61 s


@pytest.mark.slow
def test_the_readme_library_example_runs_and_prints_its_numbers(mnist_dir):
    """The Python example a newcomer copies first runs as written (real MNIST, the shipped
    PGD model) and prints each accuracy with its n."""
    import re
    import subprocess

    code = "\n".join(code_block_lines(README.read_text(), language="python"))
    assert "strong_attack" in code and "progress=True" in code
    env = {**os.environ, "DEFPERT_DATA": str(mnist_dir.parent), "DEFPERT_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"n=100: clean \d+%, PGD-40 \d+%, strong suite \d+%\n", done.stdout), (
        done.stdout
    )


def test_the_readme_is_short_and_names_no_commit():
    """A newcomer reads it in five minutes: at most 200 lines, and no commit hashes (those
    belong to the results' JSON and the research log)."""
    import re
    import subprocess

    text = README.read_text()
    assert len(text.splitlines()) <= 200
    words = set(re.findall(r"\b[0-9a-f]{7,40}\b", text))
    if (ROOT / ".git").exists():
        known = subprocess.run(["git", "-C", str(ROOT), "rev-list", "--all", "--abbrev=7",
                                "--abbrev-commit"], capture_output=True, text=True).stdout  # fmt: skip
        commits = {c for c in known.split()}
        assert not {w for w in words if any(c.startswith(w) or w.startswith(c) for c in commits)}
    assert not {w for w in words if re.search(r"[a-f]", w) and re.search(r"\d", w)}
