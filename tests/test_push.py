"""`python -m trainer push` through the real CLI against a local fake of the Hub's upload API (tests/hub_fake.py).

huggingface_hub talks to the fake for real (HF_ENDPOINT): create_repo, the README's metadata check, preupload, the
LFS batch, the LFS upload and its verify, and the NDJSON commit; the fake keeps what was committed. hf_xet is
installed here, and its upload protocol (a CAS server) can't reasonably be faked, so the tests set the library's
own switch HF_HUB_DISABLE_XET=1: upload_folder then takes its single-commit LFS path. No mock of HfApi.
"""

import socket

import pytest

from .hub_fake import NOT_UPLOADS, HubFake
from .test_first_hour import one_error_line
from .tiny import run_cli

TOKEN = "hf_fake_write_token"


@pytest.fixture
def hub():
    with HubFake() as fake:
        yield fake


def hub_env(run_env, endpoint, tmp_path, token=TOKEN):
    """The run's settings, an offline-free huggingface_hub pointed at `endpoint`, and no stored login."""
    return {**run_env, "HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@pytest.mark.slow
def test_push_uploads_the_export_with_its_card(exported_run, hub, tmp_path):
    out, env, _ = exported_run
    export = out / "export" / "demo_sentiment"
    result = run_cli("push", "--task=demo_sentiment", "--repo_id=my-org/sentiment", "--private",
                     env=hub_env(env, hub.url, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    local = {p.name: p.read_bytes() for p in export.iterdir() if not p.name.startswith(".")}
    assert set(local) == {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                          "trainer_task.json"}
    assert hub.repos["my-org/sentiment"]["files"] == local  # the exact files and bytes that arrived
    assert hub.repos["my-org/sentiment"]["visibility"] == "private"
    assert hub.commits == [{"repo": "my-org/sentiment", "summary": "Upload demo_sentiment (multitask-trainer export)",
                            "lfs": ["model.safetensors"]}]  # the weights went through LFS, the rest inline
    assert not hub.unexpected
    uploads = [r for r in hub.requests if r[1] not in NOT_UPLOADS]
    paths = [path for _, path, _ in uploads]
    assert paths[:2] == ["/api/repos/create", "/api/validate-yaml"] and paths[-1].endswith("/commit/main")
    assert any(p.endswith(".git/info/lfs/objects/batch") for p in paths)
    for method, path, auth in uploads:
        if not path.startswith("/lfs-upload/"):  # the LFS PUT goes to a presigned URL, without the token
            assert auth == f"Bearer {TOKEN}", (method, path)
    assert result.stdout.strip().endswith(f"-> {hub.url}/my-org/sentiment")
    assert "6 files: README.md, config.json, model.safetensors" in result.stdout

    again = run_cli("push", "--task=demo_sentiment", "--repo_id=my-org/sentiment", f"--model_dir={export}",
                    env=hub_env(env, hub.url, tmp_path))  # the repo exists now (409, exist_ok): a second commit
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(hub.commits) == 2 and hub.repos["my-org/sentiment"]["files"] == local


@pytest.mark.slow
def test_push_without_a_token_is_one_line(exported_run, hub, tmp_path):
    _, env, _ = exported_run
    line = one_error_line(run_cli("push", "--task=demo_sentiment", "--repo_id=my-org/x",
                                  env=hub_env(env, hub.url, tmp_path, token="")))
    assert line == "error: push needs a Hugging Face token with write access: set HF_TOKEN (in the environment or " \
                   ".env) or run `hf auth login`"
    assert hub.requests == []


@pytest.mark.slow
def test_a_401_from_the_hub_is_one_line(exported_run, hub, tmp_path):
    _, env, _ = exported_run
    hub.status = 401
    line = one_error_line(run_cli("push", "--task=demo_sentiment", "--repo_id=my-org/x",
                                  env=hub_env(env, hub.url, tmp_path)))
    assert line.startswith("error: push of demo_sentiment to my-org/x failed: ") and "401 Unauthorized" in line
    assert line.endswith("(the token is invalid or expired; set a valid HF_TOKEN or run `hf auth login`)")
    assert not hub.commits


@pytest.mark.slow
def test_no_export_or_no_hub_is_one_line(exported_run, tmp_path):
    _, env, _ = exported_run
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    line = one_error_line(run_cli("push", "--task=nope", "--repo_id=my-org/x", env=hub_env(env, closed, tmp_path)))
    assert "no export of task 'nope' in" in line and "run python -m trainer export" in line
    line = one_error_line(run_cli("push", "--task=demo_sentiment", "--repo_id=my-org/x",
                                  env=hub_env(env, closed, tmp_path)))
    assert line.startswith("error: push of demo_sentiment to my-org/x failed: ")


def test_push_help_lists_its_flags():
    result = run_cli("push", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--task", "--repo_id", "--private", "--model_dir"):
        assert flag in result.stdout
    assert "hf auth login" in result.stdout and "push" in run_cli("--help").stdout
