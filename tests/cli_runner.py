"""`stylecli ARGS` for tests, run in the test's own process.

The same `main` a shell runs, with its exit code and its stdout and stderr, without the ~4 s a new Python process
spends importing torch and loading a pack. An exception that escapes `main` is reported as a process would report it
(a traceback on stderr, exit code 1), so tests that check "one line, no traceback" see what a user would. Tests about
what happens at import or across processes (torchrun) start a process of their own.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from unittest import mock


def stylecli(*args, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `stylecli *args` (each made a string) in `cwd` with `env` added to the environment; returns what
    subprocess.run(capture_output=True, text=True) would: args, returncode, stdout, stderr."""
    from stylecli.cli import main

    argv, here = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["stylecli", *map(str, args)]
    try:
        # env added to os.environ (the console reads COLUMNS at each print), and the whole environment restored
        # afterwards, as a child process could not change its parent's
        with mock.patch.dict(os.environ, {k: str(v) for k, v in (env or {}).items()}), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if cwd is not None:
                os.chdir(cwd)
            try:
                main()
                code = 0
            except SystemExit as exc:
                if isinstance(exc.code, str):  # sys.exit("message"): printed, exit code 1
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what the interpreter prints for an uncaught exception
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
