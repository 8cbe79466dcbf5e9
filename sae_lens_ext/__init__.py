"""sae-lens-ext: plugin architectures, loss terms and resamplers for SAE-Lens.

Importing this package is cheap on purpose (it runs at interpreter start-up
through a ``.pth`` file): heavy modules (torch, sae_lens) are imported only by
the submodules that need them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy, so that `import sae_lens_ext` stays cheap
    if name == "hookimpl":
        from sae_lens_ext.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(name)
