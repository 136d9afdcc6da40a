"""Tests for ctrlab.data.readers: every real layout parses exactly like a hand parse of its lines,
format detection, gzip / directory / glob inputs, and the bad-line policies (error and skip),
including the switch from Arrow's fast path to the line-by-line fallback deep inside a file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ctrlab.data import readers
from ctrlab.data.formats import detect_format, file_schema, schema_for_file
from ctrlab.data.readers import DataError, RowReader, resolve_inputs
from ctrlab.data.synth import write_synthetic
from ctrlab.schema import CRITEO_DENSE, CRITEO_SPARSE, FORMAT_NAMES, PRESETS

CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
FEATURES = [*CRITEO_DENSE, *CRITEO_SPARSE]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def read(paths, schema, bad_lines: str = "error") -> tuple[pa.Table, RowReader]:
    """All rows of ``paths`` as one table, and the reader (for its skip report and sources)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    reader = RowReader(paths, schema, bad_lines=bad_lines)
    tables = [chunk.table for chunk in reader]
    assert tables, "the reader yielded no chunk"
    return pa.concat_tables(tables), reader


def read_auto(path, bad_lines: str = "error") -> tuple[pa.Table, RowReader]:
    return read(path, schema_for_file(path, detect_format(path)), bad_lines)


def _num(text: str) -> float | None:
    return None if text == "" else float(text)


def _cat(text: str) -> str | None:
    return None if text == "" else text


def hand_row(fields: list[str], names: list[str]) -> dict:
    """One delimited line, split by hand, as the canonical row dict the readers should give."""
    assert len(fields) == len(names)
    row = {}
    for name, value in zip(names, fields):
        if name == "label" or name in CRITEO_DENSE:
            row[name] = _num(value)
        else:
            row[name] = _cat(value)
    return row


def tsv_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def hand_tsv(lines: list[str], names: list[str] = CRITEO_COLUMNS) -> list[dict]:
    return [hand_row(line.split("\t"), names) for line in lines]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def replace_field(line: str, index: int, value: str, sep: str = "\t") -> str:
    fields = line.split(sep)
    fields[index] = value
    return sep.join(fields)


def table_rows(table: pa.Table, columns=None) -> list[dict]:
    if columns is not None:
        table = table.select(columns)
    return table.to_pylist()


# --------------------------------------------------------------------------------------------
# every real file parses, with the right rows and columns
# --------------------------------------------------------------------------------------------

def test_criteo_tsv_equals_hand_parse_of_every_line(shared_data):
    path = shared_data["criteo_train"]
    table, reader = read_auto(path)
    assert table.num_rows == 10109
    assert table.column_names == CRITEO_COLUMNS
    assert all(table.schema.field(c).type == pa.float64() for c in ["label", *CRITEO_DENSE])
    assert all(table.schema.field(c).type == pa.string() for c in CRITEO_SPARSE)
    lines = tsv_lines(path)
    expected = hand_tsv(lines)
    assert table_rows(table) == expected  # every value of every row, nulls included
    assert reader.sources[0].rows == 10109 and reader.skipped.total == 0
    assert reader.sources[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert reader.sources[0].bytes == path.stat().st_size


def test_criteo_tsv_spot_values(shared_data):
    path = shared_data["criteo_train"]
    table, _ = read_auto(path)
    first = tsv_lines(path)[0].split("\t")
    row0 = table.slice(0, 1).to_pylist()[0]
    assert row0["label"] == float(first[0])
    assert row0["I2"] == float(first[2])
    assert row0["C1"] == first[14]
    assert row0["C26"] == _cat(first[39])
    # an empty field is null, never "" or 0
    empty_at = [i for i, v in enumerate(first) if v == ""]
    assert empty_at, "the first Criteo line has missing fields"
    for i in empty_at:
        assert row0[CRITEO_COLUMNS[i]] is None
    # negative counts (mostly I2) survive
    i2 = [v for v in table.column("I2").to_pylist() if v is not None]
    hand_negative = sum(1 for line in tsv_lines(path) if line.split("\t")[2].startswith("-"))
    assert hand_negative > 0
    assert sum(1 for v in i2 if v < 0) == hand_negative
    labels = table.column("label").to_pylist()
    assert set(labels) == {0.0, 1.0}
    assert sum(labels) == sum(1 for line in tsv_lines(path) if line.startswith("1\t"))
    # categorical values are the original 8-hex strings
    assert all(re.fullmatch(r"[0-9a-f]{8}", v) for v in table.column("C1").to_pylist() if v is not None)


def test_paddlerec_part0_tsv(shared_data):
    path = shared_data["paddle_part0"]
    assert detect_format(path) == "criteo"
    table, _ = read_auto(path)
    assert table.num_rows == 100
    assert table_rows(table) == hand_tsv(tsv_lines(path))


def test_kaggle_csv_carries_id(shared_data):
    path = shared_data["kaggle_tr_rx"]
    assert detect_format(path) == "criteo_kaggle_csv"
    table, _ = read_auto(path)
    assert table.num_rows == 1999
    assert table.column_names == ["id", *CRITEO_COLUMNS]
    assert table.schema.field("id").type == pa.string()
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:2] == ["Id", "Label"]
    expected = []
    for fields in rows[1:]:
        row = {"id": fields[0]}
        row.update(hand_row(fields[1:], CRITEO_COLUMNS))
        expected.append(row)
    assert table_rows(table) == expected
    assert table.column("id")[0].as_py() == rows[1][0]


def test_deepctr_csv_float_ints(shared_data):
    path = shared_data["deepctr_sample"]
    assert detect_format(path) == "criteo_csv"
    table, _ = read_auto(path)
    assert table.num_rows == 200
    assert table.column_names == CRITEO_COLUMNS
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert table_rows(table) == [hand_row(r, CRITEO_COLUMNS) for r in rows[1:]]
    # ints written as floats: "260.0" -> 260.0
    assert rows[1][3] == "260.0"
    assert table.column("I3")[0].as_py() == 260.0


def _hand_slot(line: str) -> dict:
    row: dict = {c: None for c in CRITEO_SPARSE}
    dense = []
    for token in line.split():
        key, _, value = token.partition(":")
        if key == "click":
            row["label"] = float(value)
        elif key == "dense_feature":
            dense.append(float(value))
        else:
            row[f"C{int(key)}"] = value
    assert len(dense) == 13
    row.update(dict(zip(CRITEO_DENSE, dense)))
    return {c: row[c] for c in CRITEO_COLUMNS}


def test_paddlerec_slot(shared_data):
    path = shared_data["paddle_slot"]
    assert detect_format(path) == "slot"
    table, reader = read_auto(path)
    assert table.num_rows == 110
    assert table.column_names == CRITEO_COLUMNS
    assert len(CRITEO_DENSE) == 13 and len(CRITEO_SPARSE) == 26
    assert table_rows(table) == [_hand_slot(line) for line in tsv_lines(path)]
    assert reader.sources[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_frappe_generic_csv_crlf(shared_data):
    path = shared_data["frappe_valid"]
    raw = path.read_bytes()
    assert b"\r\n" in raw
    fmt, schema = file_schema(path, "csv", None)
    assert fmt == "csv"
    table, _ = read(path, schema)
    header = ["label", "user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
              "country", "city"]
    assert table.num_rows == 57722
    assert table.column_names == header
    assert schema.dense == () and list(schema.sparse) == header[1:]
    city = table.column("city").to_pylist()
    assert not any("\r" in v for v in city if v is not None)
    lines = raw.decode().split("\r\n")
    assert lines[-1] == ""
    body = [line.split(",") for line in lines[1:-1]]
    assert city == [fields[-1] for fields in body]
    assert table.column("label").to_pylist() == [float(f[0]) for f in body]
    assert table.column("user").to_pylist() == [f[1] for f in body]


# --------------------------------------------------------------------------------------------
# gzip, directories, globs
# --------------------------------------------------------------------------------------------

def test_gzip_equals_plain(shared_data, tmp_path):
    path = shared_data["criteo_train"]
    gz = tmp_path / "train.txt.gz"
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain, _ = read_auto(path)
    assert detect_format(gz) == "criteo"
    packed, reader = read_auto(gz)
    assert packed.equals(plain)
    # the hash recorded is the one of the file on disk (the compressed bytes)
    assert reader.sources[0].sha256 == hashlib.sha256(gz.read_bytes()).hexdigest()
    # gzip is recognised by its magic bytes, not the extension
    disguised = tmp_path / "train.tsv"
    shutil.copy(gz, disguised)
    assert read_auto(disguised)[0].equals(plain)


def test_gzip_kaggle_csv_and_slot(shared_data, tmp_path):
    for name in ("kaggle_tr_rx", "paddle_slot"):
        path = shared_data[name]
        gz = tmp_path / (path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        assert read_auto(gz)[0].equals(read_auto(path)[0]), name


@pytest.fixture()
def criteo_parts(shared_data, tmp_path):
    """train.txt split into 4 uneven part files (zero-padded names) plus a hidden file."""
    lines = tsv_lines(shared_data["criteo_train"])
    folder = tmp_path / "parts"
    folder.mkdir()
    cuts = [0, 1, 3000, 7777, len(lines)]
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        write_lines(folder / f"part-{i:05d}", lines[lo:hi])
    (folder / ".DS_Store").write_text("not data")
    return folder, lines


def test_directory_of_parts(shared_data, criteo_parts):
    folder, lines = criteo_parts
    paths = resolve_inputs(folder)
    assert [p.name for p in paths] == [f"part-{i:05d}" for i in range(4)]
    table, reader = read(paths, PRESETS["criteo"])
    whole, _ = read_auto(shared_data["criteo_train"])
    assert table.equals(whole)
    assert [s.rows for s in reader.sources] == [1, 2999, 4777, len(lines) - 7777]


def test_glob_of_parts(shared_data, criteo_parts):
    folder, _ = criteo_parts
    paths = resolve_inputs(str(folder / "part-*"))
    assert len(paths) == 4
    table, _ = read(paths, PRESETS["criteo"])
    assert table.equals(read_auto(shared_data["criteo_train"])[0])
    # a list mixing a file and a glob keeps the given order
    mixed = resolve_inputs([str(folder / "part-00003"), str(folder / "part-0000[01]")])
    assert [p.name for p in mixed] == ["part-00003", "part-00000", "part-00001"]


def test_resolve_inputs_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_inputs(tmp_path / "nope.tsv")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        resolve_inputs(str(tmp_path / "*.tsv"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        resolve_inputs(empty)


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------

def test_detect_each_preset(shared_data):
    assert detect_format(shared_data["criteo_train"]) == "criteo"
    assert detect_format(shared_data["paddle_dnn_train"]) == "criteo"
    assert detect_format(shared_data["kaggle_va_rx"]) == "criteo_kaggle_csv"
    assert detect_format(shared_data["deepctr_sample"]) == "criteo_csv"
    assert detect_format(shared_data["paddle_slot"]) == "slot"


@pytest.mark.parametrize("first_line", [
    "a,b,c,d,e\n1,2,3,4,5",
    "label,user,item\n1,2,3",
    "1\t2\t3\t4\t5",
    "feat_idx:1 feat_idx:2 feat_value:1.0 label:0",
])
def test_detect_ambiguous_lists_formats(tmp_path, first_line):
    path = tmp_path / "mystery.csv"
    path.write_text(first_line + "\n")
    with pytest.raises(ValueError) as info:
        detect_format(path)
    message = str(info.value)
    assert str(path) in message
    for name in FORMAT_NAMES:
        assert name in message


def test_detect_real_non_presets(shared_data):
    for name in ("frappe_valid", "paddle_feat_idx"):
        with pytest.raises(ValueError, match="--format"):
            detect_format(shared_data[name])


def test_criteo_test_layout_without_label(shared_data, tmp_path):
    lines = tsv_lines(shared_data["criteo_train"])[:500]
    unlabeled = write_lines(tmp_path / "test.txt", [line.split("\t", 1)[1] for line in lines])
    assert detect_format(unlabeled) == "criteo_test"
    table, _ = read_auto(unlabeled)
    assert table.column_names == FEATURES
    assert "label" not in table.column_names
    assert table_rows(table) == [{k: v for k, v in r.items() if k != "label"} for r in hand_tsv(lines)]


def test_kaggle_csv_without_label(shared_data, tmp_path):
    path = shared_data["kaggle_tr_rx"]
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    out = tmp_path / "test.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([[r[0], *r[2:]] for r in rows[:300]])
    assert out.read_text().startswith("Id,I1,I2,")
    fmt = detect_format(out)
    assert fmt == "criteo_kaggle_csv"
    schema = schema_for_file(out, fmt)
    assert schema.label is None
    table, _ = read(out, schema)
    assert table.column_names == ["id", *FEATURES]
    labeled, _ = read_auto(path)
    assert table.equals(labeled.slice(0, 299).drop_columns(["label"]))


def test_csv_with_byte_order_mark(shared_data, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + shared_data["kaggle_tr_rx"].read_bytes())
    assert detect_format(path) == "criteo_kaggle_csv"
    table, _ = read(path, schema_for_file(path, "criteo_kaggle_csv"))
    assert table.equals(read_auto(shared_data["kaggle_tr_rx"])[0])


def test_header_mismatch_is_data_error(shared_data, tmp_path):
    lines = shared_data["deepctr_sample"].read_text().split("\n")
    lines[0] = lines[0].replace("I3", "I33")
    bad = tmp_path / "bad_header.csv"
    bad.write_text("\n".join(lines))
    with pytest.raises(DataError) as info:
        schema_for_file(bad, "criteo_csv")
    assert info.value.line == 1 and str(bad) in str(info.value)


# --------------------------------------------------------------------------------------------
# bad lines: the real truncated file
# --------------------------------------------------------------------------------------------

def test_truncated_lines_error_names_file_and_line(shared_data):
    path = shared_data["paddle_dnn_test"]
    with pytest.raises(DataError) as info:
        read(path, PRESETS["criteo"])
    err = info.value
    assert err.line == 3
    assert err.path == str(path)
    message = str(err)
    assert str(path) in message and ":3:" in message and "expected 40" in message


def test_truncated_lines_skip_policy(shared_data):
    path = shared_data["paddle_dnn_test"]
    table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert table.num_rows == 61
    report = reader.skipped
    assert report.total == 39
    assert sum(report.counts.values()) == 39
    assert all("wrong field count" in reason and "expected 40" in reason for reason in report.counts)
    assert reader.sources[0].skipped == 39 and reader.sources[0].rows == 61
    good = [line for line in path.read_text().splitlines() if len(line.split("\t")) == 40]
    assert len(good) == 61
    assert table_rows(table) == hand_tsv(good)
    assert report.to_dict()["total"] == 39 and report.to_dict()["examples"]


# --------------------------------------------------------------------------------------------
# bad lines: crafted inputs (small file: the whole file is one Arrow block)
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def criteo_head(shared_data) -> list[str]:
    return tsv_lines(shared_data["criteo_train"])[:200]


def _expect_skip(path: Path, schema, good_lines: list[str], reasons: Counter, names=CRITEO_COLUMNS):
    table, reader = read(path, schema, bad_lines="skip")
    assert table_rows(table) == hand_tsv(good_lines, names)
    assert reader.skipped.counts == reasons
    assert reader.sources[0].skipped == sum(reasons.values())
    assert reader.sources[0].rows == len(good_lines)


def test_non_numeric_count(criteo_head, tmp_path):
    lines = list(criteo_head)
    lines[6] = replace_field(lines[6], 5, "abc")  # line 7, field I5
    path = write_lines(tmp_path / "bad.tsv", lines)
    with pytest.raises(DataError) as info:
        read(path, PRESETS["criteo"])
    err = info.value
    assert (err.line, err.field) == (7, "I5")
    assert str(path) in str(err) and "'abc'" in str(err)
    good = criteo_head[:6] + criteo_head[7:]
    _expect_skip(path, PRESETS["criteo"], good, Counter({"not a number": 1}))


def test_label_two(criteo_head, tmp_path):
    lines = list(criteo_head)
    lines[11] = replace_field(lines[11], 0, "2")
    path = write_lines(tmp_path / "label.tsv", lines)
    with pytest.raises(DataError) as info:
        read(path, PRESETS["criteo"])
    assert (info.value.line, info.value.field) == (12, "label")
    assert "0/1" in str(info.value)
    table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert table_rows(table) == hand_tsv(criteo_head[:11] + criteo_head[12:])
    assert reader.skipped.total == 1


def test_label_two_in_kaggle_csv(shared_data, tmp_path):
    lines = shared_data["kaggle_tr_rx"].read_text().split("\n")
    lines[5] = replace_field(lines[5], 1, "2", sep=",")  # file line 6
    path = tmp_path / "tr.csv"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError) as info:
        read_auto(path)
    assert (info.value.line, info.value.field) == (6, "label")
    table, reader = read_auto(path, bad_lines="skip")
    assert table.num_rows == 1998 and reader.skipped.total == 1
    assert lines[5].split(",")[0] not in table.column("id").to_pylist()


def test_empty_line(criteo_head, tmp_path):
    lines = criteo_head[:9] + [""] + criteo_head[9:]
    path = write_lines(tmp_path / "empty.tsv", lines)
    with pytest.raises(DataError) as info:
        read(path, PRESETS["criteo"])
    assert info.value.line == 10 and str(path) in str(info.value)
    table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert table_rows(table) == hand_tsv(criteo_head)
    assert reader.skipped.total == 1


@pytest.mark.parametrize("edit", ["label", "empty"])
def test_label_skips_counted_per_source(criteo_head, tmp_path, edit):
    lines = list(criteo_head)
    if edit == "label":
        lines[11] = replace_field(lines[11], 0, "2")
    else:
        lines.insert(11, "")
    path = write_lines(tmp_path / "label.tsv", lines)
    _, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert reader.skipped.total == 1
    assert reader.sources[0].skipped == 1


def test_empty_line_reason(criteo_head, tmp_path):
    path = write_lines(tmp_path / "empty.tsv", criteo_head[:9] + [""] + criteo_head[9:])
    _, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert list(reader.skipped.counts) == ["empty line"]


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_empty_line_without_label_column(criteo_head, tmp_path, policy):
    unlabeled = [line.split("\t", 1)[1] for line in criteo_head]
    path = write_lines(tmp_path / "test.txt", unlabeled[:9] + [""] + unlabeled[9:])
    schema = PRESETS["criteo_test"]
    if policy == "error":
        with pytest.raises(DataError) as info:
            read(path, schema)
        assert info.value.line == 10
    else:
        table, reader = read(path, schema, bad_lines="skip")
        assert table.num_rows == len(unlabeled)
        assert reader.skipped.total == 1


def test_field_count_41(criteo_head, tmp_path):
    lines = list(criteo_head)
    lines[20] = lines[20] + "\textra"
    path = write_lines(tmp_path / "wide.tsv", lines)
    with pytest.raises(DataError) as info:
        read(path, PRESETS["criteo"])
    assert info.value.line == 21
    assert "got 41, expected 40" in str(info.value)
    _expect_skip(path, PRESETS["criteo"], criteo_head[:20] + criteo_head[21:],
                 Counter({"wrong field count (got 41, expected 40)": 1}))


def test_several_bad_lines_skip_counts_by_reason(criteo_head, tmp_path):
    lines = list(criteo_head)
    lines[3] = replace_field(lines[3], 2, "x1")
    lines[50] = lines[50] + "\t"
    lines[90] = "\t".join(lines[90].split("\t")[:30])
    lines[120] = replace_field(lines[120], 13, "zz")
    path = write_lines(tmp_path / "many.tsv", lines)
    good = [line for i, line in enumerate(criteo_head) if i not in (3, 50, 90, 120)]
    _expect_skip(path, PRESETS["criteo"], good, Counter({
        "not a number": 2,
        "wrong field count (got 41, expected 40)": 1, "wrong field count (got 30, expected 40)": 1}))
    with pytest.raises(DataError) as info:
        read(path, PRESETS["criteo"])
    assert (info.value.line, info.value.field) == (4, "I2")


def test_crlf_tsv(criteo_head, tmp_path):
    path = tmp_path / "crlf.tsv"
    path.write_bytes(("\r\n".join(criteo_head) + "\r\n").encode())
    table, _ = read(path, PRESETS["criteo"])
    assert table_rows(table) == hand_tsv(criteo_head)
    # the fallback parser strips the CR too
    path.write_bytes(("\r\n".join(criteo_head[:5] + [replace_field(criteo_head[5], 4, "?")] + criteo_head[6:])
                      + "\r\n").encode())
    table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert table_rows(table) == hand_tsv(criteo_head[:5] + criteo_head[6:])
    assert reader.skipped.total == 1


def test_quoted_csv_fast_and_fallback_agree(shared_data, tmp_path):
    with open(shared_data["kaggle_tr_rx"], newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[:101]
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    schema = schema_for_file(path, "criteo_kaggle_csv")  # the header's quotes are stripped
    assert schema.label == "Label"
    table, _ = read(path, schema)
    expected = []
    for fields in rows[1:]:
        expected.append({"id": fields[0], **hand_row(fields[1:], CRITEO_COLUMNS)})
    assert table_rows(table) == expected
    # a non-numeric count forces the line-by-line parser, which must unquote the same way
    rows[40][5] = "n/a"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    table, reader = read(path, schema, bad_lines="skip")
    assert table_rows(table) == expected[:39] + expected[40:]
    assert reader.skipped.total == 1
    with pytest.raises(DataError) as info:
        read(path, schema)
    assert (info.value.line, info.value.field) == (41, "I4")


def test_detect_quoted_header(shared_data, tmp_path):
    with open(shared_data["kaggle_tr_rx"], newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[:5]
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    assert detect_format(path) == "criteo_kaggle_csv"


# --------------------------------------------------------------------------------------------
# bad lines deep in a file bigger than one chunk: fast path -> fallback switch
# --------------------------------------------------------------------------------------------

BIG_ROWS = 160_000
BAD_ROW = 150_000  # 1-based line number of the injected bad line


@pytest.fixture(scope="module")
def big_tsv(tmp_path_factory):
    assert BIG_ROWS > readers.CHUNK_ROWS
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.tsv"
    write_synthetic(path, BIG_ROWS, seed=11, progress=False)
    lines = tsv_lines(path)
    assert len(lines) == BIG_ROWS
    clean, _ = read(path, PRESETS["criteo"])
    assert clean.num_rows == BIG_ROWS
    return folder, lines, clean


def _without(table: pa.Table, *rows0: int) -> pa.Table:
    """``table`` less the given 0-based rows."""
    keep = np.ones(table.num_rows, dtype=bool)
    keep[list(rows0)] = False
    return table.filter(pa.array(keep))


def test_deep_bad_line_error(big_tsv):
    folder, lines, _ = big_tsv
    bad = list(lines)
    bad[BAD_ROW - 1] = replace_field(bad[BAD_ROW - 1], 5, "abc")
    path = write_lines(folder / "deep_error.tsv", bad)
    with pytest.raises(DataError) as info:
        for _ in RowReader([path], PRESETS["criteo"]):
            pass
    assert (info.value.line, info.value.field) == (BAD_ROW, "I5")
    assert str(path) in str(info.value)


def test_deep_bad_line_skip_delivers_every_other_row_once(big_tsv):
    folder, lines, clean = big_tsv
    bad = list(lines)
    bad[BAD_ROW - 1] = replace_field(bad[BAD_ROW - 1], 5, "abc")
    path = write_lines(folder / "deep_skip.tsv", bad)
    reader = RowReader([path], PRESETS["criteo"], bad_lines="skip")
    chunks = list(reader)
    assert len(chunks) >= 2  # the fast path delivered at least one chunk before the switch
    table = pa.concat_tables([c.table for c in chunks])
    assert table.equals(_without(clean, BAD_ROW - 1))
    assert reader.skipped.counts == Counter({"not a number": 1})
    assert reader.skipped.examples == [f"{path}:{BAD_ROW}: not a number"]
    info = reader.sources[0]
    assert (info.rows, info.skipped) == (BIG_ROWS - 1, 1)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # chunk first_line numbers stay exact across the switch (nothing skipped before it)
    for chunk in chunks:
        first = chunk.table.slice(0, 1).to_pylist()[0]
        assert first == hand_tsv([bad[chunk.first_line - 1]])[0]


def test_deep_bad_lines_on_both_sides_of_the_switch(big_tsv):
    folder, lines, clean = big_tsv
    bad = list(lines)
    bad[99] = bad[99] + "\tx"  # line 100: a field-count problem the fast path skips itself
    bad[49_999] = replace_field(bad[49_999], 0, "3")  # line 50000: bad label, filtered by the fast path
    bad[BAD_ROW - 1] = replace_field(bad[BAD_ROW - 1], 9, "1..2")  # line 150000, I9: forces the fallback
    bad[BIG_ROWS - 1] = replace_field(bad[BIG_ROWS - 1], 13, "-")  # the last line, I13
    path = write_lines(folder / "deep_multi.tsv", bad)
    table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    assert table.equals(_without(clean, 99, 49_999, BAD_ROW - 1, BIG_ROWS - 1))
    assert reader.skipped.total == 4
    assert reader.sources[0].skipped == 4 and reader.sources[0].rows == BIG_ROWS - 4


def test_fast_and_fallback_agree_on_nan(big_tsv):
    folder, lines, clean = big_tsv
    bad = list(lines)
    bad[10] = replace_field(bad[10], 3, "nan")  # line 11, I3
    bad[BAD_ROW - 1] = replace_field(bad[BAD_ROW - 1], 5, "abc")
    path = write_lines(folder / "deep_nan.tsv", bad)
    table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
    # whatever the policy for 'nan' is (a missing value, or a bad line), every other row is delivered once
    got = table.drop_columns(["I3"])
    nan_accepted = _without(clean, BAD_ROW - 1).drop_columns(["I3"])
    nan_rejected = _without(clean, BAD_ROW - 1, 10).drop_columns(["I3"])
    assert (got.equals(nan_accepted) and reader.skipped.total == 1) or \
        (got.equals(nan_rejected) and reader.skipped.total == 2)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_non_ascii_digit_is_a_bad_value(criteo_head, tmp_path, policy):
    lines = list(criteo_head)
    lines[20] = replace_field(lines[20], 5, "\u0661")  # ARABIC-INDIC DIGIT ONE, line 21, I5
    path = write_lines(tmp_path / "digit.tsv", lines)
    if policy == "error":
        with pytest.raises(DataError) as info:
            read(path, PRESETS["criteo"])
        assert (info.value.line, info.value.field) == (21, "I5")
    else:
        table, reader = read(path, PRESETS["criteo"], bad_lines="skip")
        assert reader.skipped.total == 1
        assert table_rows(table) == hand_tsv(criteo_head[:20] + criteo_head[21:])


def test_bad_lines_policy_validated():
    with pytest.raises(ValueError, match="bad_lines"):
        RowReader([], PRESETS["criteo"], bad_lines="ignore")


# --------------------------------------------------------------------------------------------
# slot lines
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def slot_lines(shared_data) -> list[str]:
    return tsv_lines(shared_data["paddle_slot"])[:40]


def _set_token(line: str, index: int, token: str | None) -> str:
    tokens = line.split()
    if token is None:
        del tokens[index]
    else:
        tokens[index] = token
    return " ".join(tokens)


@pytest.mark.parametrize("name, edit, field, reason_part", [
    ("missing click", lambda l: _set_token(l, 0, None), "label", "click"),
    ("repeated slot", lambda l: l + " 5:123", "C5", "appears twice"),
    ("unknown slot", lambda l: l + " 27:1", None, "unknown slot '27'"),
    ("unknown key", lambda l: l + " foo:1", None, "unknown slot 'foo'"),
    ("12 dense", lambda l: _set_token(l, 1, None), None, "expected 13 dense_feature values, got 12"),
    ("bad dense", lambda l: _set_token(l, 3, "dense_feature:abc"), "I3", "expected a number"),
    ("label 2", lambda l: _set_token(l, 0, "click:2"), "label", "0/1 label"),
    ("no value", lambda l: l + " 3:", None, "key:value"),
])
def test_slot_bad_lines(slot_lines, tmp_path, name, edit, field, reason_part):
    lines = list(slot_lines)
    lines[7] = edit(lines[7])
    assert lines[7] != slot_lines[7], name
    path = write_lines(tmp_path / "slot.txt", lines)
    with pytest.raises(DataError) as info:
        read(path, PRESETS["slot"])
    err = info.value
    assert err.line == 8 and err.field == field
    assert reason_part in str(err) and str(path) in str(err)
    table, reader = read(path, PRESETS["slot"], bad_lines="skip")
    assert table_rows(table) == [_hand_slot(line) for i, line in enumerate(slot_lines) if i != 7]
    assert reader.skipped.total == 1
    assert reader.skipped.examples[0].startswith(f"{path}:8: ")


def test_slot_absent_slot_is_missing_and_empty_line_is_bad(slot_lines, tmp_path):
    lines = list(slot_lines)
    lines[2] = " ".join(t for t in lines[2].split() if not t.startswith("7:"))
    path = write_lines(tmp_path / "slot.txt", lines)
    table, _ = read(path, PRESETS["slot"])
    assert table.column("C7")[2].as_py() is None
    assert table.column("C7")[1].as_py() == _hand_slot(slot_lines[1])["C7"]
    path = write_lines(tmp_path / "slot_empty.txt", slot_lines[:5] + [""] + slot_lines[5:])
    with pytest.raises(DataError) as info:
        read(path, PRESETS["slot"])
    assert info.value.line == 6
    table, reader = read(path, PRESETS["slot"], bad_lines="skip")
    assert table.num_rows == len(slot_lines) and reader.skipped.total == 1
