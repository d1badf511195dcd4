"""Configs, runner, reports and the command line (``bnjax ...``)."""

from bnjax.run._errors import RunError as RunError
from bnjax.run._rundir import inspect_run_dir as inspect_run_dir
from bnjax.run.config import ConfigError as ConfigError
from bnjax.run.config import StudyConfig as StudyConfig
from bnjax.run.config import load_config as load_config
from bnjax.run.config import parse_config as parse_config
from bnjax.run.report import Claim as Claim
from bnjax.run.report import Figure as Figure
from bnjax.run.report import write_report as write_report
from bnjax.run.results import StudyResults as StudyResults
from bnjax.run.results import VariantResult as VariantResult
from bnjax.run.runner import TrainedVariant as TrainedVariant
from bnjax.run.runner import load_results as load_results
from bnjax.run.runner import rebuild_report as rebuild_report
from bnjax.run.runner import run_study as run_study

__all__ = [
    "Claim",
    "ConfigError",
    "Figure",
    "RunError",
    "StudyConfig",
    "StudyResults",
    "TrainedVariant",
    "VariantResult",
    "inspect_run_dir",
    "load_config",
    "load_results",
    "parse_config",
    "rebuild_report",
    "run_study",
    "write_report",
]
