"""The run library behind the ``sae-lens`` commands (heavy: torch, SAE-Lens).

Layers, from the command line down (see ``docs/internals.md``):

- ``lm`` (``train``), ``demo``, ``evaluate`` (``evaluate``, ``plots``), ``upload``:
  one module per command body, called by the click shells in ``sae_lens_ext.commands``;
- ``loop``: the one training loop (upstream's ``SAETrainer`` through its public seams);
- ``output``, ``progress``, ``report``, ``figures``: the output folder, the training log
  and progress display, metrics and saved files, figures;
- ``lm_config``: ``train``'s argument parsing and the checks made before loading a model.
"""
