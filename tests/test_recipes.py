"""Every recipe in examples/ runs, so none of them rots: each on a tiny offline model with capped data.

A recipe is a settings file (`ENV_FILE=examples/<name>.env`, the same file `make run-local ENV_FILE=...`
reads) plus, where it needs one, a TASKS_FILE. Offline, the hub is replaced as a user would replace it:
built-in tasks read DATA_DIR=../shared/data, and each `source: {dataset: ...}` points to a local
parquet directory with the hub dataset's columns and ClassLabel features, read by the same
`datasets.load_dataset` call. The environment overrides the recipe (model, caps, output), as it does
for users.
"""

import json
import subprocess
from pathlib import Path

import datasets
import pytest
import yaml

from trainer.config.env import CLOUD_ENV_NAMES, read_dotenv
from trainer.config.settings import load_settings

from .tiny import ROOT, SHARED_DATA, save_tiny_gpt2, save_tiny_llama, save_tiny_pretrained, save_tiny_t5

pytestmark = pytest.mark.slow
EXAMPLES = ROOT / "examples"

RECIPES = sorted(p.stem for p in EXAMPLES.glob("*.env"))

# What each hub dataset of the recipes looks like (columns and label names), for the offline stand-ins.
TWEETS = ["i love this so much", "this is awful and sad", "what a day , so angry", "hope tomorrow is better",
          "nothing to say really", "best news ever !"]
STAND_INS = {
    ("cardiffnlp/tweet_eval", "emotion"): ("classification", ["anger", "joy", "optimism", "sadness"]),
    ("cardiffnlp/tweet_eval", "sentiment"): ("classification", ["negative", "neutral", "positive"]),
    ("Salesforce/wikitext", "wikitext-2-raw-v1"): ("text", None),
    ("nyu-mll/glue", "sst2"): ("sentence", ["negative", "positive"]),
    ("nyu-mll/glue", "stsb"): ("pair", None),
    ("tau/commonsense_qa", "default"): ("commonsense", None),
}


def stand_in(directory: Path, dataset: str, config: str, splits: dict[str, str]) -> Path:
    kind, names = STAND_INS[(dataset, config)]
    target = directory / f"{dataset.replace('/', '_')}_{config}"
    target.mkdir(parents=True, exist_ok=True)
    for split in splits.values():
        if kind == "text":
            ds = datasets.Dataset.from_dict({"text": [f" {t} .\n" for t in TWEETS * 10] + [""]})
        elif kind == "pair":  # GLUE's STS-B: two sentences and a float32 score
            features = datasets.Features({"sentence1": datasets.Value("string"),
                                          "sentence2": datasets.Value("string"), "label": datasets.Value("float32")})
            rows = {"sentence1": TWEETS * 8, "sentence2": TWEETS[::-1] * 8,
                    "label": [i % 26 / 5 for i in range(len(TWEETS) * 8)]}
            ds = datasets.Dataset.from_dict(rows, features=features)
        elif kind == "commonsense":  # tau/commonsense_qa: choices {label: [A..E], text: [...]}, answerKey
            rows = {"question": TWEETS * 8,
                    "choices": [{"label": list("ABCDE"), "text": TWEETS[:5]} for _ in range(len(TWEETS) * 8)],
                    "answerKey": ["ABCDE"[i % 5] for i in range(len(TWEETS) * 8)]}
            ds = datasets.Dataset.from_dict(rows)
        else:
            column = "text" if kind == "classification" else kind  # GLUE's SST-2 names it sentence
            features = datasets.Features({column: datasets.Value("string"),
                                          "label": datasets.ClassLabel(names=names)})
            rows = {column: TWEETS * 8, "label": [i % len(names) for i in range(len(TWEETS) * 8)]}
            ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(str(target / f"{split}.parquet"))
    return target


def offline_tasks_file(recipe_env: dict[str, str], tmp_path: Path) -> Path | None:
    """The recipe's TASKS_FILE with every hub source replaced by a local stand-in (one directory per
    config, so the config goes)."""
    if "TASKS_FILE" not in recipe_env:
        return None
    doc = yaml.safe_load((ROOT / recipe_env["TASKS_FILE"]).read_text(encoding="utf-8"))
    for task in doc["tasks"]:
        source = task["source"]
        splits = {k: source[k] for k in ("train", "dev", "test") if k in source}
        source["dataset"] = str(stand_in(tmp_path / "hub", source["dataset"], source.pop("config"), splits))
    out = tmp_path / "tasks.yaml"
    out.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"encoder": save_tiny_pretrained(root / "bert"), "gpt2": save_tiny_gpt2(root / "gpt2"),
            "llama": save_tiny_llama(root / "llama"), "t5": save_tiny_t5(root / "t5")}


def test_every_recipe_is_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(RECIPES) >= 5
    for name in RECIPES:
        assert f"examples/{name}.env" in readme, name


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the project")
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_offline(name, tmp_path, tiny_models, cli):
    recipe = EXAMPLES / f"{name}.env"
    settings = read_dotenv(recipe)
    family = settings["MODEL_NAME"].lower()
    model = tiny_models["gpt2" if family.startswith("gpt2") else "llama" if "llama" in family
                        else "t5" if "t5" in family else "encoder"]
    env = {"ENV_FILE": str(recipe), "MODEL_NAME": str(model), "DATA_DIR": str(SHARED_DATA),
           "OUTPUT_DIR": str(tmp_path / "out"), "MAX_STEPS": "6", "BATCH_SIZE": "8", "MAX_TRAIN_SAMPLES": "48",
           "MAX_EVAL_SAMPLES": "16", "MAX_SEQ_LENGTH": "32", "EVAL_STEPS": "3", "LOGGING_STEPS": "3"}
    tasks_file = offline_tasks_file(settings, tmp_path)
    if tasks_file:
        env["TASKS_FILE"] = str(tasks_file)
    result = cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = settings["TASKS"].split(",") if "TASKS" in settings else [
        t["name"] for t in yaml.safe_load(tasks_file.read_text())["tasks"]]
    assert sorted(report["tasks"]) == sorted(expected)
    assert report["select_best"] == settings.get("SELECT_BEST", "per_task")
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir() if p.is_dir()) == sorted(expected)
    _, sources = load_settings(environ={}, dotenv_path=recipe)  # every value named as coming from the recipe
    training = [key for key in settings if key not in CLOUD_ENV_NAMES]  # the machine a recipe needs: job-spec's
    assert {key: sources[key.lower()] for key in training} == {key: recipe.name for key in training}


def test_make_run_local_reads_the_recipe_named_by_env_file(tmp_path, cli):
    """The documented command, through make: the recipe's settings reach the trainer (shown by `settings`,
    which make passes ENV_FILE to the same way)."""
    recipe = tmp_path / "mine.env"
    recipe.write_text("MAX_STEPS=2\nMAX_TRAIN_SAMPLES=16\nMAX_EVAL_SAMPLES=8\nBATCH_SIZE=4\n"
                      f"OUTPUT_DIR={tmp_path / 'out'}\n", encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(["make", "run-local", f"ENV_FILE={recipe}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["global_step"] == 2
    missing = cli("train", env={"ENV_FILE": str(tmp_path / "nope.env")})
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [f"error: ENV_FILE={tmp_path / 'nope.env'} does not exist; give a "
                                                   "settings file such as examples/<recipe>.env, or unset ENV_FILE "
                                                   "to read .env"]
