"""Training an SAE: the training-class contract with loss terms (``sae``), SAE-Lens's own
architectures with loss terms (``twins``), the loss-term types (``loss_terms``), the table of
latent-indexed tensors (``latents``) and optimizer rows (``optim``), what follows each
optimizer step (``after_step``), resampling's types (``resampling``), the sparse step
(``sparse``), data-parallel wiring (``distributed``) and host-memory settings
(``host_memory``). Imports nothing itself: ``sae_lens_ext.api`` loads these lazily."""
