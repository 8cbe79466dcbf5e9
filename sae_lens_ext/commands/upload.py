"""``sae-lens upload``: push a trained SAE folder to the Hub with upstream's uploader."""

from __future__ import annotations

import click

from sae_lens_ext.commands._options import debug_option


@click.command(name="upload", context_settings={"max_content_width": 100})
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--repo-id", required=True, help="Hub repository, e.g. user/name.")
@click.option(
    "--sae-id",
    default=None,
    help="Folder in the repo for this SAE (default: the folder name of PATH). "
    "Load it back with SAE.from_pretrained(REPO_ID, SAE_ID).",
)
@click.option("--revision", default="main", show_default=True)
@click.option("--no-readme", is_flag=True, help="Do not add upstream's default README.md.")
@debug_option
def upload_command(
    path: str, repo_id: str, sae_id: str | None, revision: str, no_readme: bool
) -> int:
    """Upload the SAE in PATH (cfg.json, sae_weights.safetensors, sparsity, runner config).

    Runs SAE-Lens's upload_saes_to_huggingface; log in first (`hf auth login` or
    HF_TOKEN). Plugin architectures load back with SAE.from_pretrained wherever
    sae-lens-ext is installed.
    """
    from sae_lens_ext.run.upload import upload

    return upload(path, repo_id=repo_id, sae_id=sae_id, revision=revision, add_readme=not no_readme)
