"""bin/install-torch: the CPU index when it answers, the plain pin when it does not, one line
saying which; only the CPU-index attempt may fail. pip is a stub that logs its arguments."""

import functools
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bin" / "install-torch"


def _stub_python(tmp_path: Path, *, cpu_rc: int, plain_rc: int) -> Path:
    """A 'python' whose ``-m pip install`` exits with ``cpu_rc`` (with --index-url) or
    ``plain_rc`` (without), and whose ``-c`` (the script's probe) is the real interpreter."""
    stub = tmp_path / "python"
    stub.write_text(f"""#!/bin/sh
echo "$*" >> "{tmp_path / 'calls.log'}"
if [ "$1" = "-c" ]; then exec "{sys.executable}" "$@"; fi
if [ "$3" = "show" ]; then echo "Name: torch"; echo "Version: 2.13.0+stub"; exit 0; fi
case "$*" in
  *--index-url*) exit {cpu_rc} ;;
  *) exit {plain_rc} ;;
esac
""")
    stub.chmod(0o755)
    return stub


@pytest.fixture
def cpu_index(tmp_path):
    """A local HTTP index with a ``torch/`` page (the probe's target)."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<html></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(tmp_path, index: str, *, cpu_rc: int = 0, plain_rc: int = 0):
    stub = _stub_python(tmp_path, cpu_rc=cpu_rc, plain_rc=plain_rc)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(stub), "STREAMER_TORCH_INDEX": index, "STREAMER_TORCH_TIMEOUT": "5"}
    done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True)
    log = (tmp_path / "calls.log").read_text().splitlines()
    pip_calls = [line for line in log if line.startswith("-m pip install")]
    return done, pip_calls


def _last_line(done) -> str:
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def test_a_reachable_cpu_index_is_used(tmp_path, cpu_index):
    done, calls = _run(tmp_path, cpu_index)
    assert done.returncode == 0, done.stderr
    assert calls == [f"-m pip install torch==2.13.0 --index-url {cpu_index} --timeout 5 --retries 0"]
    assert _last_line(done) == f"install-torch: torch 2.13.0+stub: from PyTorch's CPU index ({cpu_index})"


def test_a_failing_cpu_index_falls_back_to_the_plain_pin(tmp_path, cpu_index):
    done, calls = _run(tmp_path, cpu_index, cpu_rc=1)
    assert done.returncode == 0, done.stderr
    assert calls[-1] == "-m pip install torch==2.13.0" and len(calls) == 2
    assert re.fullmatch(r"install-torch: torch 2\.13\.0\+stub: from pip's own index, as PyTorch's CPU index .* failed: "
                        r"pip could not install torch==2\.13\.0 from it .*", _last_line(done))


def test_an_unreachable_cpu_index_is_not_tried_with_pip(tmp_path):
    # Port 9 on localhost: nothing listens, the connection is refused at once.
    done, calls = _run(tmp_path, "http://127.0.0.1:9/whl/cpu")
    assert done.returncode == 0, done.stderr
    assert calls == ["-m pip install torch==2.13.0"]
    assert "from pip's own index, as PyTorch's CPU index (http://127.0.0.1:9/whl/cpu) failed" in _last_line(done)


def test_a_failing_plain_pin_fails_the_script(tmp_path):
    done, calls = _run(tmp_path, "http://127.0.0.1:9/whl/cpu", plain_rc=3)
    assert done.returncode != 0
    assert "install-torch:" not in done.stdout


def test_the_readme_s_set_up_commands_use_it_and_ci_runs_the_test_one_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .venv .*)\n```", readme)
    assert len(commands) == 2 and all("bin/install-torch" in c for c in commands)
    test_setup = next(c for c in commands if "pytest" in c)
    setup = test_setup.split(" && python -m pytest")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup in ci
