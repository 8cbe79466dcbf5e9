"""Write sae_lens_ext/sae_lens_ext_autoload.pth, the one line that runs the start-up hook.

The wheel (regular or editable) puts ``sae_lens_ext/_autoload.py`` at the root
of site-packages as ``sae_lens_ext_autoload.py`` beside this ``.pth``. The line
loads that file by its path (``sitedir`` is set while ``site`` reads a .pth),
through the frozen importlib machinery: no ``sys.path`` scan and no compile
(the cached .pyc is used), which keeps start-up overhead well under 1 ms.
tests/test_autoload.py fails if the committed .pth differs from render().
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "sae_lens_ext" / "sae_lens_ext_autoload.pth"

LINE = (
    "import os, sys; "
    "_b = sys.modules['_frozen_importlib_external']; "
    "_s = _b.spec_from_file_location('sae_lens_ext_autoload', "
    "os.path.join(sitedir, 'sae_lens_ext_autoload.py')) "
    "if os.environ.get('SAE_LENS_EXT_AUTOLOAD', '1') != '0' else None; "
    "_m = _s and sys.modules['_frozen_importlib'].module_from_spec(_s); "
    "_m and (sys.modules.__setitem__(_s.name, _m), _s.loader.exec_module(_m)); "
    "del _b, _s, _m\n"
)


def render() -> str:
    return LINE


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
