"""`python -m trainer push`: one task's export (model, tokenizer, model card) to a Hugging Face Hub model repo.

The token is HF_TOKEN, else the one `hf auth login` stored; HF_ENDPOINT points huggingface_hub at another Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from trainer.config.env import hf_token
from trainer.errors import UserError, first_line
from trainer.outputs.inference import find_export

# what the Hub's answer means for the user, by HTTP status
_HINTS = {
    401: "the token is invalid or expired; set a valid HF_TOKEN or run `hf auth login`",
    403: "the token may not write there; use a token with write access to that user or organisation",
    404: "no such repo or namespace",
}


def push(output_dir: str, task: str, repo_id: str, private: bool = False, model_dir: str | None = None) -> tuple[
        str, list[str]]:
    """Create `repo_id` (if it doesn't exist) and upload the task's export to it in one commit.

    Returns the repo's URL and the files uploaded. Every failure is a one-line `UserError`.
    """
    folder = find_export(output_dir, model_dir, task)
    token = hf_token(os.environ) or get_token()
    if not token:
        raise UserError("push needs a Hugging Face token with write access: set HF_TOKEN (in the environment or "
                        ".env) or run `hf auth login`")
    files = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=folder, ignore_patterns=[".*", "*/.*"],
                          commit_message=f"Upload {task} (multitask-trainer export)")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = f" ({_HINTS[status]})" if status in _HINTS else ""
        raise UserError(f"push of {task} to {repo_id} failed: {first_line(err)}{hint}") from None
    except (ValueError, OSError, httpx2.HTTPError) as err:  # a bad repo id, offline mode, no network
        raise UserError(f"push of {task} to {repo_id} failed: {first_line(err)}") from None
    return str(url), files
