"""Zero-touch registration: run plugin registration right after ``sae_lens`` is imported.

A ``.pth`` file imports this module at interpreter start-up. It must stay
cheap (no torch, no sae_lens, no wrapt): it only puts a one-shot finder on
``sys.meta_path``. When ``sae_lens`` is first imported, the finder lets the
normal finders locate it, wraps the loader's ``exec_module`` and, once
``sae_lens/__init__.py`` has run, registers every plugin's architectures with
SAE-Lens's registries. Set ``SAE_LENS_EXT_AUTOLOAD=0`` to switch it off.
"""

import sys

# `typing` is not imported at start-up (it costs milliseconds); mypy reads this block
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

TARGET = "sae_lens"


def _register_after_import() -> None:
    try:
        from sae_lens_ext.registration import register_with_sae_lens

        register_with_sae_lens()
    except Exception as exc:  # never break `import sae_lens`
        import warnings

        warnings.warn(
            f"sae-lens-ext: plugin registration failed: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )


class SaeLensImportHook:
    """One-shot meta-path finder that wraps ``sae_lens``'s loader."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> "ModuleSpec | None":
        if fullname != TARGET:
            return None
        uninstall()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original_exec = getattr(loader, "exec_module", None)
        if original_exec is None:
            return spec

        def exec_module(module: object) -> None:
            original_exec(module)
            _register_after_import()

        loader.exec_module = exec_module
        return spec


_HOOK = SaeLensImportHook()


def _is_hook(finder: object) -> bool:
    # by name: a .pth read twice (a site directory listed twice) runs this module twice,
    # and each run has its own class
    return type(finder).__name__ == SaeLensImportHook.__name__


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (no-op if already imported or installed)."""
    if TARGET in sys.modules:
        _register_after_import()
        return
    if not any(_is_hook(f) for f in sys.meta_path):
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_hook(f)]


install()
