"""The start-up hook: cheap, switchable, idempotent, and in sync with its source."""

from __future__ import annotations

import json
import statistics
import sysconfig
from pathlib import Path

from scripts.make_autoload_pth import TARGET, render
from tests.helpers import REPO, run_python

SITE = Path(sysconfig.get_paths()["purelib"])


def test_committed_pth_matches_generator():
    assert TARGET.read_text() == render()


def test_installed_hook_files_match_source():
    """Editable installs copy the hook beside the .pth: reinstall after editing it."""
    assert (SITE / "sae_lens_ext_autoload.pth").read_text() == render()
    installed = (SITE / "sae_lens_ext_autoload.py").read_text()
    assert installed == (REPO / "sae_lens_ext" / "_autoload.py").read_text()


def _startup_modules(env: dict[str, str]) -> set[str]:
    out = run_python("import sys, json; print(json.dumps(sorted(sys.modules)))", env=env)
    return set(json.loads(out.stdout))


def test_startup_imports_nothing_heavy():
    on = _startup_modules({})
    off = _startup_modules({"SAE_LENS_EXT_AUTOLOAD": "0"})
    assert on - off == {"sae_lens_ext_autoload"}
    assert not {"torch", "sae_lens", "wrapt", "typing", "pluggy"} & on


def test_startup_overhead_under_5ms():
    """Cold cost of the .pth line, measured in fresh interpreters (median of 7)."""
    code = f"""
import os, sys, time
os.environ['SAE_LENS_EXT_AUTOLOAD'] = '1'
sitedir = {str(SITE)!r}
line = open(os.path.join(sitedir, 'sae_lens_ext_autoload.pth')).read()
t = time.perf_counter(); exec(line); dt = time.perf_counter() - t
assert 'sae_lens_ext_autoload' in sys.modules
print(dt * 1000)
"""
    times = [float(run_python(code, env={"SAE_LENS_EXT_AUTOLOAD": "0"}).stdout) for _ in range(7)]
    assert statistics.median(times) < 5.0, times


def test_registration_happens_on_import_and_is_idempotent():
    out = run_python(
        """
import sys
assert 'sae_lens_ext.plugins' not in sys.modules
import sae_lens
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens_ext.plugins import architectures
from sae_lens_ext.registration import register_with_sae_lens
names = set(architectures())
assert names and names <= set(SAE_CLASS_REGISTRY), names
register_with_sae_lens(); register_with_sae_lens()
import sae_lens_ext._autoload as a
a.install()  # sae_lens already imported: registers again, harmlessly
print(sorted(names))
"""
    )
    assert "freq_ordered" in out.stdout and "temporal_consistency" in out.stdout


def test_switched_off_by_environment():
    out = run_python(
        "import sae_lens, sys; from sae_lens.registry import SAE_CLASS_REGISTRY as R;"
        "print('freq_ordered' in R, 'sae_lens_ext.plugins' in sys.modules)",
        env={"SAE_LENS_EXT_AUTOLOAD": "0"},
    )
    assert out.stdout.split() == ["False", "False"]


def test_plugin_selection_by_environment():
    out = run_python(
        "import sae_lens; from sae_lens.registry import SAE_CLASS_REGISTRY as R;"
        "print('freq_ordered' in R, 'temporal_consistency' in R)",
        env={"SAE_LENS_EXT_LOAD_PLUGINS": "temporal_consistency"},
    )
    assert out.stdout.split() == ["False", "True"]


def test_regular_wheel_install_registers_plugins(tmp_path):
    """A regular (non-editable) install: the wheel's .pth and hook file, read by ``site``."""
    import subprocess
    import sys

    from tests.helpers import subprocess_env

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        env=subprocess_env(),
    )
    wheel = next((tmp_path / "dist").glob("sae_lens_ext-*.whl"))
    site_dir = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(site_dir),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        env=subprocess_env(),
    )
    assert (site_dir / "sae_lens_ext_autoload.pth").read_text() == render()
    out = run_python(
        f"""
import os, site, sys
os.environ['SAE_LENS_EXT_AUTOLOAD'] = '1'  # off for the editable install's hook at start-up
site.addsitedir({str(site_dir)!r})  # reads .pth files as at start-up, with sitedir set
assert 'sae_lens_ext_autoload' in sys.modules
assert sys.modules['sae_lens_ext_autoload'].__file__.startswith({str(site_dir)!r})
import sae_lens
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
print('freq_ordered' in SAE_TRAINING_CLASS_REGISTRY)
""",
        env={"SAE_LENS_EXT_AUTOLOAD": "0"},
    )
    assert out.stdout.strip() == "True"
