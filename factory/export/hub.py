"""Push a run's (or a merge's) datasets and card to the Hugging Face Hub. Private by default: a
dataset made public is a choice, never a side effect."""

from __future__ import annotations

import os
from pathlib import Path

from factory.errors import FactoryError

CONFIGS = ("sft", "prefs", "kto", "reward")


def require_token() -> str:
    """The token, checked before any work starts."""
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise FactoryError("--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def push(folder: Path, repo: str, *, public: bool = False) -> str:
    """Upload README.md and the config folders of `folder` to the dataset repo; returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not (folder / "README.md").is_file():
        raise FactoryError(f"{folder}: no README.md (dataset card); nothing to push")
    api = HfApi(token=require_token())
    try:
        url = api.create_repo(repo, repo_type="dataset", private=not public, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset",
                          allow_patterns=["README.md", *(f"{c}/*" for c in CONFIGS)],
                          commit_message=f"Constitution Factory: {folder.name}")
    except (HfHubHTTPError, OSError, ValueError) as e:  # HTTP errors, network errors, answers it cannot read
        raise FactoryError(f"push to {repo} failed: {e}\nthe datasets are intact in {folder}; push them later with "
                           f"`hf upload {repo} {folder} --repo-type dataset --private`") from None
    return str(url)
