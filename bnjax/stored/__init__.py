"""Stored results: one run's ``summary.json`` per study and dataset kept with the project, compared on rerun,
and the README's and ``experiments/REFERENCES.md``'s results tables generated from them."""

from bnjax.stored._summaries import SUMMARY_FILE as SUMMARY_FILE
from bnjax.stored._summaries import Stored as Stored
from bnjax.stored._summaries import compare_summaries as compare_summaries
from bnjax.stored._summaries import load_stored as load_stored
from bnjax.stored._summaries import store_run as store_run
from bnjax.stored._summaries import store_summary as store_summary
from bnjax.stored._tables import check_tables as check_tables
from bnjax.stored._tables import write_tables as write_tables

__all__ = ["SUMMARY_FILE", "Stored", "check_tables", "compare_summaries", "load_stored", "store_run", "store_summary",
           "write_tables"]
