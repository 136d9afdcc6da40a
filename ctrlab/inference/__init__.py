"""One inference package: every path that scores raw rows with a bundle goes through
:meth:`Predictor.predict` (:mod:`.predictor`, scores and stage timings): the HTTP server, the
inference benchmark (:mod:`.bench`), and offline files (:mod:`.offline`, the same stages chunk by
chunk). Request rows become checked columns in :mod:`.rows`; how a file is read (its format and
schema) comes from :mod:`ctrlab.data.formats`.
"""

from ..features.pipeline import InputError
from .offline import DEFAULT_BATCH_ROWS, FileScoring, PredictResult, ScoredChunk, predict_file, score_files
from .predictor import BACKENDS, VARIANTS, InputCounts, Prediction, Predictor, Timings, input_drift
from .rows import IGNORED_KEYS, check_table, rows_to_table

__all__ = ["InputError", "DEFAULT_BATCH_ROWS", "FileScoring", "PredictResult", "ScoredChunk", "predict_file",
           "score_files", "BACKENDS", "VARIANTS", "InputCounts", "Prediction", "Predictor", "Timings",
           "input_drift", "IGNORED_KEYS", "check_table", "rows_to_table"]
