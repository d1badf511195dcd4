"""Configs, runner, reports and the command line (``bnjax ...``)."""
