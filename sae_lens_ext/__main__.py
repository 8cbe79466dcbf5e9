"""``python -m sae_lens_ext``: the ``sae-lens`` command (what ``torchrun -m sae_lens_ext``
starts on each process, e.g. ``torchrun --nproc_per_node 2 -m sae_lens_ext train ...``)."""

from sae_lens_ext.cli import cli

if __name__ == "__main__":
    cli(prog_name="sae-lens")
