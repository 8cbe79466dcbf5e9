"""``sae-lens browse``: a static, self-contained HTML browser of an SAE's latents.

- :mod:`.source`: the SAE (run folder or Hub id), its model and whole contexts of tokens;
- :mod:`.collect`: streaming, bounded statistics (running top-k contexts per latent,
  histograms, frequencies) on the SAE's device;
- :mod:`.logits`: the tokens a decoder direction promotes, through the unembedding;
- :mod:`.render` and ``assets/``: the pages (inline CSS and script, HTML-escaped tokens);
- :mod:`.export`: the same data in SAEDashboard's Neuronpedia batch format;
- :mod:`.data`: :class:`~.data.BrowserData` and :class:`~.data.Panel`, what the
  ``browser_panels`` hook receives and returns; :mod:`.svg`: charts for panels.

Importing this package is cheap; the modules that need torch import it themselves.
"""
