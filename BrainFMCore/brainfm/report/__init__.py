"""Case folders: output files, ``summary.json``, ``seg_volumes.csv`` and a PNG montage.

>>> from brainfm.report import save_prediction, write_montage, SUMMARY_NAME
>>> SUMMARY_NAME
'summary.json'
"""
from __future__ import annotations

from brainfm.report.montage import montage_size, write_montage
from brainfm.report.save import MONTAGE_NAME, SUMMARY_NAME, CaseWriter, save_prediction, write_table_csv
from brainfm.report.summary import build_summary, jsonable, output_kind, write_json

__all__ = ["save_prediction", "CaseWriter", "write_montage", "montage_size", "write_table_csv", "build_summary",
           "jsonable", "output_kind", "write_json", "SUMMARY_NAME", "MONTAGE_NAME"]
