"""Reports are pure functions of run directories on disk; this package never imports the engine.

`write_report` (page.py) writes report.md and report.html; `records.py` finds and reads the runs, `tables.py`
builds the tables, `plots.py` the figures.
"""

from visionbench.report.page import Section, write_report

__all__ = ["Section", "write_report"]
