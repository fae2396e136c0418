"""Records: every measured trial, kept in MetaSchedule's JSON database, one per layer and target.

    repair      TVM's JSON files checked line by line; bad lines moved aside (`*.torn`)
    store       the layer's records (`LayerRecords`): reads without side effects, the lock, verdicts
    judge       the peak judge: records against the measured FP32 peak (it measures; callers that
                may measure pass it in)
    summary     the best record per layer and algorithm under a logs directory
    errors      the errors, a trial's time, a warning said once

The names below are the package's; import them from `tuning.records`.
"""

from .errors import FAILED_SECONDS, ForeignRecords, RecordsError, median_seconds
from .judge import PEAK_MARGIN, PEAK_REASON, PeakJudge, peak_bound
from .repair import DB_FILES, open_database, record_problem, repair_database, repair_json_lines, workload_problem
from .store import (FAILURE_LOG, LayerRecords, Record, design_id, directory_lock, layer_directory, read_task_json,
                    trace_id)
from .summary import summaries

__all__ = ["DB_FILES", "FAILED_SECONDS", "FAILURE_LOG", "PEAK_MARGIN", "PEAK_REASON", "ForeignRecords", "LayerRecords",
           "PeakJudge", "Record", "RecordsError", "design_id", "directory_lock", "layer_directory", "median_seconds", "open_database", "peak_bound",
           "read_task_json", "record_problem", "repair_database", "repair_json_lines", "summaries", "trace_id",
           "workload_problem"]
