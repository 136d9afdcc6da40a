"""One inference package: every path that scores raw rows with a bundle goes through
:meth:`Predictor.predict` (:mod:`.predictor`): offline files (:mod:`.offline`), the HTTP server
and the inference benchmark (:mod:`.bench`). Request rows become checked columns in :mod:`.rows`.
"""

from ..features.pipeline import InputError
from .offline import DEFAULT_BATCH_ROWS, FileScoring, PredictResult, ScoredChunk, input_schema, predict_file, score_files
from .predictor import BACKENDS, VARIANTS, InputCounts, Predictor, Timings, input_drift
from .rows import IGNORED_KEYS, check_table, rows_to_table

__all__ = ["InputError", "DEFAULT_BATCH_ROWS", "FileScoring", "PredictResult", "ScoredChunk", "input_schema",
           "predict_file", "score_files", "BACKENDS", "VARIANTS", "InputCounts", "Predictor", "Timings",
           "input_drift", "IGNORED_KEYS", "check_table", "rows_to_table"]
