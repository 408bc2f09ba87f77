"""The Kaggle notebook forwards a command's output while it runs (an 85-minute run that shows
nothing until it ends looks dead). Its own ``stream`` function runs a child that prints a line
and then waits for the test: the line must arrive before the child is let go."""

import ast
import os
import selectors
import subprocess
import sys
import textwrap

from streamer.kaggle import NOTEBOOK_NAME, write_notebook

CHILD = "import sys; print('first', flush=True); sys.stdin.readline(); print('second', flush=True); sys.exit(3)"


def _stream_source(tmp_path) -> str:
    import nbformat

    notebook = nbformat.read(str(write_notebook(tmp_path / NOTEBOOK_NAME)), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef) and node.name == "stream":
                return ast.get_source_segment(cell.source, node)
    raise AssertionError("the notebook has no stream() function")


def _read_until(proc, selector, needle: str, seen: str) -> str:
    while needle not in seen:
        assert selector.select(timeout=60), f"no output within 60 s; so far {seen!r}"
        chunk = os.read(proc.stdout.fileno(), 4096).decode()
        assert chunk, f"the process ended before {needle!r}; output {seen!r}"
        seen += chunk
    return seen


def test_the_notebook_forwards_output_while_the_command_runs(tmp_path):
    script = "import codecs, subprocess, sys\n" + _stream_source(tmp_path) + textwrap.dedent(f"""
        code = stream([sys.executable, "-c", {CHILD!r}])
        print("exit", code, flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        seen = _read_until(proc, selector, "first", "")
        assert "second" not in seen  # the child is still waiting: "first" came while it ran
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        seen = _read_until(proc, selector, "exit 3", seen)
        assert seen.index("first") < seen.index("second") < seen.index("exit 3")
    finally:
        proc.kill()
        proc.wait()
