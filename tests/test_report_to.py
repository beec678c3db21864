"""REPORT_TO: the trackers the Trainer logs to, checked before anything is read or written."""

import importlib.util

import pytest

from trainer.config.settings import load_settings
from trainer.errors import UserError

from .test_first_hour import one_error_line
from .tiny import settings_of


def test_report_to_is_a_checked_comma_list():
    settings = settings_of()
    assert settings.report_to == ("tensorboard",)
    settings, _ = load_settings({}, environ={"REPORT_TO": "tensorboard, mlflow"}, dotenv_path=None)
    assert settings.report_to == ("tensorboard", "mlflow")
    with pytest.raises(UserError, match=r"REPORT_TO='comet' is not allowed; choose one or more of: tensorboard, "
                                        r"wandb, mlflow, none"):
        load_settings({}, environ={"REPORT_TO": "tensorboard,comet"}, dotenv_path=None)
    with pytest.raises(UserError, match=r"'none' turns every tracker off; give it alone"):
        load_settings({}, environ={"REPORT_TO": "none,wandb"}, dotenv_path=None)


def test_report_to_reaches_the_training_arguments(tmp_path):
    from trainer.training.arguments import training_arguments

    for value, expected in (("tensorboard", ["tensorboard"]), ("none", [])):
        settings = settings_of(report_to=value, output_dir=str(tmp_path / "out"))
        assert training_arguments(settings).report_to == expected
    assert not (tmp_path / "out").exists()


def test_a_tracker_that_is_not_installed_stops_train_with_one_line(tmp_path, cli):
    from trainer.training.arguments import check_trackers

    if importlib.util.find_spec("mlflow") is None:  # in-process: the same check for every tracker
        with pytest.raises(UserError, match=r"^REPORT_TO=mlflow needs the mlflow package: pip install mlflow$"):
            check_trackers(("tensorboard", "mlflow"))
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    output = tmp_path / "out"
    result = cli("train", env={"OUTPUT_DIR": str(output), "REPORT_TO": "tensorboard,wandb", "MAX_STEPS": "1"})
    assert one_error_line(result) == "error: REPORT_TO=wandb needs the wandb package: pip install wandb"
    assert not output.exists()
