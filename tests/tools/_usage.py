"""The check every command line's bad-argument test makes: one line on stderr, status 2."""

from __future__ import annotations

import subprocess


def assert_one_line_usage_error(
    result: subprocess.CompletedProcess[str], *fragments: str, starts: str = "", ends: str = ""
) -> str:
    """*result* exited with status 2 before any work: nothing on stdout, one stderr line.

    The line starts with *starts*, ends with *ends* and contains every one of
    *fragments*; it is returned for further checks.
    """
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""  # nothing ran: no report line was printed
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(starts) and line.endswith(ends), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
