"""Install hints: the distribution's own name (``streamer`` on the public index is someone
else's package), and an editable install of the checkout when streamer runs from one."""

import re
import sys
from pathlib import Path

import pytest

from streamer import install
from streamer.errors import DependencyError
from streamer.models import graphs

ROOT = Path(__file__).resolve().parents[1]


def test_the_distribution_name_is_the_one_in_setup_cfg():
    assert re.search(rf"^name = {re.escape(install.DIST_NAME)}$", (ROOT / "setup.cfg").read_text(), re.M)
    assert install.DIST_NAME != "streamer"


def test_from_a_checkout_the_hint_is_an_editable_install_of_it(tmp_path, monkeypatch):
    checkout = tmp_path / "my checkout"
    (checkout / "streamer").mkdir(parents=True)
    (checkout / "setup.cfg").write_text("[metadata]\n")
    package = checkout / "streamer"
    monkeypatch.chdir(checkout)
    assert install.install_hint("openvino", package_dir=package) == "pip install -e '.[openvino]'"
    assert install.torch_hint(package_dir=package) == "sh ./bin/install-torch"
    monkeypatch.chdir(tmp_path)
    assert install.install_hint("openvino", package_dir=package) == f"pip install -e '{checkout}[openvino]'"


def test_from_a_wheel_the_hint_names_the_distribution(tmp_path):
    package = tmp_path / "site-packages" / "streamer"
    package.mkdir(parents=True)
    assert install.install_hint("openvino", package_dir=package) == "pip install 'birdclef-streamer[openvino]'"
    assert install.torch_hint(package_dir=package) == (
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")


def test_this_checkout_gets_the_editable_hint():
    assert install.checkout_root() == ROOT
    assert install.install_hint("ray").startswith("pip install -e ")


def test_a_missing_openvino_names_the_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(DependencyError) as err:
        graphs.import_openvino()
    assert install.install_hint("openvino") in str(err.value)


def test_no_message_or_doc_names_the_stranger_s_package():
    """``pip install 'streamer[...]'`` would install the unrelated package of that name."""
    paths = [*ROOT.glob("streamer/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("tests/*.py")]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in paths for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"(?<![\w-])streamer\[", line) and p.name != "test_install.py"]
    assert not found


def test_bench_without_its_extra_stops_at_once_with_one_line(tmp_path, monkeypatch, capsys):
    from streamer import cli

    monkeypatch.setitem(sys.modules, "efficientnet_pytorch", None)
    cache = tmp_path / "cache"
    assert cli.main(["bench", "--quick", "--cache-dir", str(cache), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and install.install_hint("bench") in err[0]
    assert not cache.exists()  # nothing was built first


def test_a_summary_without_matplotlib_is_a_warning_naming_the_extra(tmp_path, monkeypatch, caplog):
    import numpy as np

    from streamer.archive.summary import SummaryGrids, draw_summary

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    windows = np.zeros((1, 24))
    windows[0, 5] = 3
    minutes = np.zeros(24)
    minutes[5] = 1.0
    grids = SummaryGrids(classes=["a"], labels=["A"], dates=["2025-01-01"], timed_windows=windows, timed_minutes=minutes,
                         timed_rate=windows * 60.0, recordings=[], n_untimed=0, untimed_windows=np.zeros((1, 0)),
                         untimed_minutes=np.zeros(0), untimed_rate=np.zeros((1, 0)), threshold=0.5)
    with caplog.at_level("INFO", logger="streamer"):
        assert draw_summary(grids, tmp_path / "_summary.png") is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and install.install_hint("plots") in warnings[0].getMessage()
    assert not (tmp_path / "_summary.png").exists()
