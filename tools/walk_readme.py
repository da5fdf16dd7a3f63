"""Walk the README's commands top to bottom as a newcomer would, on a terminal.

Runs every shell line of the README's ``bash`` blocks that calls defpert, in order, in the
current directory (a fresh clone whose ``.venv`` holds defpert), each on a pseudo-terminal
(so progress bars show as a user sees them), and records its exit status, its time, its
longest silence and its last line. A command still running after ``--cap`` seconds gets
Ctrl-C, as a user would give it, and is recorded as interrupted (long commands resume when
rerun). Synopsis lines (``[--quick]``, ``a|b``) and lines for other machines (``HOST0``) are
not commands and are left out; the two setup lines at the top are walked separately (they
make the venv this walk uses) unless ``--with-setup``.

    python3 -m venv .venv && .venv/bin/pip install -q -e .
    python tools/walk_readme.py --cap 180 --uncapped "train --dataset mnist" --out walk.json
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def code_block_lines(markdown: str, language: str = "bash") -> list[str]:
    """The logical lines of the markdown's fenced ``language`` blocks, continuations joined."""
    lines, inside, pending = [], False, ""
    for raw in markdown.splitlines():
        if raw.startswith("```"):
            inside = raw.strip() == f"```{language}" if not inside else False
            continue
        if not inside:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return lines


def without_comment(line: str) -> str:
    """The shell line less its trailing ``# comment``."""
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def walkable(line: str, with_setup: bool) -> bool:
    """A line a user would type as it stands."""
    command = without_comment(line)
    if "defpert" not in command or "[" in command or "|" in command or "HOST0" in command:
        return False
    return with_setup or "python3 -m venv" not in command


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(pid, sig)


def as_a_user_starts_it() -> None:
    """Ctrl-C stops the command, also when this walk runs where SIGINT is ignored (started
    in the background, e.g. with ``nohup … &``, whose children inherit the ignore)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_on_a_terminal(command: str, env: dict[str, str], cap: float,
                      size: tuple[int, int] = (40, 120)) -> dict[str, Any]:  # fmt: skip
    """Run ``command`` with bash on a pseudo-terminal of ``size`` (rows, columns: a new one
    has 0 x 0, where progress bars draw nothing); Ctrl-C it after ``cap`` seconds."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", command], stdin=follower, stdout=follower,
                            stderr=follower, env=env, start_new_session=True,
                            preexec_fn=as_a_user_starts_it)  # fmt: skip
    os.close(follower)
    output, last_output, longest_silence, interrupted = b"", started, 0.0, False
    while True:
        now = time.monotonic()
        if not interrupted and now - started > cap:
            signal_group(proc.pid, signal.SIGINT)
            interrupted = True
        if interrupted and now - started > cap + 60:
            signal_group(proc.pid, signal.SIGKILL)
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every process on it is gone
                chunk = b""
            if not chunk:
                break
            longest_silence = max(longest_silence, time.monotonic() - last_output)
            last_output = time.monotonic()
            output += chunk
    code = proc.wait()
    os.close(leader)
    seconds = time.monotonic() - started
    text = ANSI.sub("", output.decode(errors="replace")).replace("\r\n", "\n")
    screens = [part.strip() for line in text.split("\n") for part in line.split("\r")]
    shown = [s for s in screens if s]
    return {"command": command, "exit": code, "seconds": round(seconds, 1),
            "interrupted_at_cap": interrupted, "longest_silence_s": round(longest_silence, 1),
            "last_lines": shown[-3:], "output": text}  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | command | exit | seconds | longest silence (s) | last line |",
             "|---:|---|---:|---:|---:|---|"]  # fmt: skip
    for i, r in enumerate(rows, 1):
        status = "Ctrl-C at cap" if r["interrupted_at_cap"] else str(r["exit"])
        last = (r["last_lines"] or [""])[-1].replace("|", "\\|")[:120]
        lines.append(f"| {i} | `{r['command']}` | {status} | {r['seconds']:.0f} | "
                     f"{r['longest_silence_s']:.0f} | {last} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--cap", type=float, default=180.0, help="seconds before Ctrl-C")
    p.add_argument(
        "--uncapped",
        default="",
        help="a regular expression: commands it finds run to the end (a later one needs them)",
    )
    p.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out the first N commands (walked already in this directory)",
    )
    p.add_argument("--with-setup", action="store_true", help="also walk the setup lines")
    p.add_argument("--venv", default=".venv", help="its bin/ goes first on PATH")
    p.add_argument("--out", help="JSON file for every command's record and output")
    args = p.parse_args()
    env = dict(os.environ)
    env["PATH"] = f"{Path(args.venv).resolve() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    commands = [
        without_comment(line)
        for line in code_block_lines(Path(args.readme).read_text())
        if walkable(line, args.with_setup)
    ]
    rows = []
    for i, command in enumerate(commands, 1):
        if i <= args.skip:
            continue
        print(f"[{i}/{len(commands)}] {command}", flush=True)
        uncapped = bool(args.uncapped) and re.search(args.uncapped, command) is not None
        row = run_on_a_terminal(command, env, float("inf") if uncapped else args.cap)
        rows.append(row)
        status = "Ctrl-C at cap" if row["interrupted_at_cap"] else f"exit {row['exit']}"
        print(f"    {status} after {row['seconds']:.0f} s, longest silence "
              f"{row['longest_silence_s']:.0f} s: {(row['last_lines'] or [''])[-1][:100]}",
              flush=True)  # fmt: skip
        if args.out:
            tmp = Path(args.out).with_suffix(".tmp")
            tmp.write_text(json.dumps({"cap_s": args.cap, "rows": rows}, indent=1))
            tmp.replace(args.out)
    print(markdown(rows))


if __name__ == "__main__":
    main()
