"""The public Python API: the names the README uses are functions, whatever is imported first."""

import importlib

import genaug


def test_job_functions_stay_functions_after_their_modules_are_imported():
    for name in ("fit", "rebalance", "synthesize", "augment"):
        importlib.import_module(f"genaug.{name}")
        assert callable(getattr(genaug, name)) and not isinstance(getattr(genaug, name), type(genaug)), name
    for name in genaug.__all__:
        assert hasattr(genaug, name), name


def test_errors_users_catch_are_one_type():
    assert issubclass(genaug.GenaugError, Exception)
