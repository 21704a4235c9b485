"""Batch refinement of a dataset: ``livertumorrefine refine --batch <manifest.csv | folder> --out-dir DIR``.

``manifest`` reads and checks the cases (a CSV manifest or a folder) and cuts them into shards,
``records`` keeps the per-case records a later run resumes from, ``summary`` writes the batch
summary and ``runner`` refines the cases, in this process or in worker processes. The names
below are the package's API: ``from LiverTumorRefineLib import batch; batch.run_batch(...)``.
"""
from LiverTumorRefineLib.batch.manifest import (COLUMNS, OUTPUT_SUFFIX, REQUIRED, ROLES, SHOWN_PROBLEMS, BatchCase,
                                                case_name, check_cases, find_cases, load_cases, parse_shard,
                                                read_manifest, shard_cases)
from LiverTumorRefineLib.batch.records import (RECORD_VERSION, BatchSettings, case_state, finished_result,
                                               read_record, record_path)
from LiverTumorRefineLib.batch.runner import WORKER_DIED, BatchReport, Log, available_cores, refine_case, run_batch
from LiverTumorRefineLib.batch.summary import CaseResult, summary_paths, write_summary

__all__ = ["COLUMNS", "OUTPUT_SUFFIX", "REQUIRED", "ROLES", "SHOWN_PROBLEMS", "BatchCase", "case_name", "check_cases",
           "find_cases", "load_cases", "parse_shard", "read_manifest", "shard_cases",
           "RECORD_VERSION", "BatchSettings", "case_state", "finished_result", "read_record", "record_path",
           "WORKER_DIED", "BatchReport", "Log", "available_cores", "refine_case", "run_batch",
           "CaseResult", "summary_paths", "write_summary"]
