"""Built-in plugins of sae-lens-ext, loaded through the same entry points as third-party ones."""
