"""The small-file lane (a small upload): ``score_small_file`` gives the scores and the first-bad-line
error of ``score_files`` on the same file, without Arrow's reader."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_bundle

from ctrlab.data.readers import DataError, MemoryFile
from ctrlab.features.online import SMALL_INPUT_ROWS
from ctrlab.inference import Predictor, score_files
from ctrlab.inference.offline import score_small_file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    raw, bundle = tiny_bundle(tmp_path_factory.mktemp("small_file"), 3000, seed=5)
    lines = raw.read_text().splitlines()
    return Predictor(bundle), lines


def _file_scores(predictor, path) -> np.ndarray:
    parts = [c.probabilities for c in score_files(predictor, path)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _layouts(lines: list[str]) -> dict[str, str]:
    """The same rows in the layouts a small upload may have (labelled, unlabelled, Kaggle CSV)."""
    unlabelled = ["\t".join(line.split("\t")[1:]) for line in lines]
    header = "Id,Label," + ",".join([f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])
    kaggle = [header] + [f"{100 + i}," + line.replace("\t", ",") for i, line in enumerate(lines)]
    return {"criteo": "\n".join(lines) + "\n", "criteo_test": "\n".join(unlabelled),
            "criteo_kaggle_csv": "\r\n".join(kaggle) + "\r\n"}


@pytest.mark.parametrize("rows", [1, 5, SMALL_INPUT_ROWS])
def test_small_file_scores_equal_file_scoring(setup, tmp_path, rows):
    predictor, lines = setup
    for layout, text in _layouts(lines[:rows]).items():
        path = tmp_path / f"{layout}.txt"
        path.write_text(text)
        small = score_small_file(predictor, path)
        assert small is not None, layout
        scores, fmt = small
        assert fmt == layout
        expected = _file_scores(predictor, path)
        assert len(scores) == rows
        assert scores.tobytes() == expected.tobytes(), layout
        in_memory = score_small_file(predictor, MemoryFile("upload", path.read_bytes()))
        assert in_memory[1] == layout and in_memory[0].tobytes() == expected.tobytes()


def test_more_rows_or_slot_files_take_the_reader(setup, tmp_path):
    predictor, lines = setup
    path = tmp_path / "big.tsv"
    path.write_text("\n".join(lines[:SMALL_INPUT_ROWS + 1]) + "\n")
    assert score_small_file(predictor, path) is None
    assert len(_file_scores(predictor, path)) == SMALL_INPUT_ROWS + 1


def _bad_variants(lines: list[str]) -> dict[str, bytes]:
    good = [line.encode() for line in lines[:6]]

    def with_line(i: int, line: bytes) -> bytes:
        out = list(good)
        out[i] = line
        return b"\n".join(out) + b"\n"

    fields = lines[3].split("\t")
    bad_number = "\t".join(fields[:4] + ["12x"] + fields[5:]).encode()
    bad_label = "\t".join(["2"] + fields[1:]).encode()
    return {
        "too few fields": with_line(3, "\t".join(fields[:-1]).encode()),
        "too many fields": with_line(2, lines[2].encode() + b"\tx"),
        "not a number": with_line(3, bad_number),
        "label not 0/1": with_line(4, bad_label),
        "empty line": with_line(2, b""),
        "carriage return": with_line(1, lines[1].encode().replace(b"\t", b"\r", 1)),
        "invalid utf-8": with_line(5, lines[5].encode().replace(b"\t", b"\t\xff", 1)),
        "nan count": with_line(1, "\t".join(lines[1].split("\t")[:2] + ["nan"] + lines[1].split("\t")[3:]).encode()),
    }


@pytest.mark.parametrize("case", ["too few fields", "too many fields", "not a number", "label not 0/1",
                                  "empty line", "carriage return", "invalid utf-8", "nan count"])
def test_small_file_errors_equal_file_scoring(setup, tmp_path, case):
    predictor, lines = setup
    path = tmp_path / "bad.tsv"
    path.write_bytes(_bad_variants(lines)[case])
    with pytest.raises(DataError) as small:
        score_small_file(predictor, path)
    with pytest.raises(DataError) as files:
        _file_scores(predictor, path)
    assert str(small.value) == str(files.value)
    assert small.value.line == files.value.line and small.value.line is not None
    with pytest.raises(DataError) as in_memory:
        score_small_file(predictor, MemoryFile("upload", path.read_bytes()))
    assert str(in_memory.value) == str(files.value).replace(str(path), "upload")
