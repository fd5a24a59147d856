"""BigWarp landmarks: CSV and JSON forms, inactive / 3-D / unpaired rows, the CSV writer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.landmarks import Landmarks, java_double, read_landmarks, write_bigwarp_csv

CSV_2D = '''"Pt-0","true","10.5","20.0","1.0","2.0"
"Pt-1","true","110.25","20.0","11.0","2.0"
"Pt-2","false","999.0","999.0","99.0","99.0"
"Pt-3","true","10.5","220.0","1.0","22.0"
"Pt-4","false","Infinity","Infinity","5.0","5.0"
"Pt-5","true","60.0","120.0","6.0","12.0"
'''


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_2d_active_rows_only(tmp_path: Path) -> None:
    lm = read_landmarks(_write(tmp_path, "l.csv", CSV_2D))
    assert lm.names == ("Pt-0", "Pt-1", "Pt-3", "Pt-5")
    np.testing.assert_array_equal(lm.moving, [[10.5, 20.0], [110.25, 20.0], [10.5, 220.0], [60.0, 120.0]])
    np.testing.assert_array_equal(lm.fixed, [[1.0, 2.0], [11.0, 2.0], [1.0, 22.0], [6.0, 12.0]])


def test_csv_3d_constant_z_dropped(tmp_path: Path) -> None:
    text = "".join(f'"P{i}","true","{i}.0","{2 * i}.0","0.0","{i + 1}.0","{i + 2}.0","5.0"\n' for i in range(4))
    lm = read_landmarks(_write(tmp_path, "l3.csv", text))
    np.testing.assert_array_equal(lm.moving, [[i, 2 * i] for i in range(4)])
    np.testing.assert_array_equal(lm.fixed, [[i + 1, i + 2] for i in range(4)])


def test_csv_3d_varying_z_refused(tmp_path: Path) -> None:
    text = "".join(f'"P{i}","true","{i}.0","1.0","{i}.0","1.0","2.0","0.0"\n' for i in range(4))
    with pytest.raises(InputError, match="varying moving z"):
        read_landmarks(_write(tmp_path, "l3.csv", text))


def test_csv_with_id_column(tmp_path: Path) -> None:
    text = "".join(f'"P{i}","true","{i}","{i}.0","{i * i}.0","{i + 1}.0","2.0"\n' for i in range(3))
    lm = read_landmarks(_write(tmp_path, "id.csv", text))
    np.testing.assert_array_equal(lm.moving, [[0, 0], [1, 1], [2, 4]])


def test_unpaired_active_row_is_an_error(tmp_path: Path) -> None:
    text = CSV_2D.replace('"Pt-4","false"', '"Pt-4","true"')
    with pytest.raises(InputError) as err:
        read_landmarks(_write(tmp_path, "u.csv", text))
    assert "line 5" in err.value.problem and "unpaired" in err.value.problem and err.value.source.endswith("u.csv")


@pytest.mark.parametrize("bad_line, message", [
    ('"Pt-9","true","1.0","2.0","3.0"', "line 3: 5 fields"),
    ('"Pt-9","yes","1.0","2.0","3.0","4.0"', "line 3: active field"),
    ('"Pt-9","true","1.0","x","3.0","4.0"', "line 3: 'x' is not a number"),
    ('"Pt-9","true","1.0","1e400","3.0","4.0"', "line 3: '1e400' is too large for a coordinate"),
])
def test_malformed_rows_name_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    lines = CSV_2D.splitlines()
    lines.insert(2, bad_line)
    with pytest.raises(InputError, match=message):
        read_landmarks(_write(tmp_path, "m.csv", "\n".join(lines) + "\n"))


@pytest.mark.parametrize("text, start, end", [
    ("name,active,moving x,moving y,fixed x,fixed y\n" + CSV_2D,
     "line 1 holds no coordinates (name, active, moving x, moving y, fixed x, fixed y)",
     ": a header row? BigWarp's landmark CSV has none; delete it"),
    (CSV_2D.replace(",", ";"), "line 1: 1 fields", "; its fields are separated by semicolons: BigWarp's CSV uses commas"),
    (CSV_2D.replace(",", "\t"), "line 1: 1 fields", "; its fields are separated by tabs: BigWarp's CSV uses commas"),
    (CSV_2D.replace(".", ","), "line 1: coordinates with decimal commas (10,5, 20,0, …): BigWarp's CSV has commas "
                               "between its fields and decimal points in its numbers",
     "save it from BigWarp again, or replace the decimal commas with points"),  # quoted: each a field still
    ('"Pt-0","true","-1,5E-4","20,0","3,25e2","4,0"\n', "line 1: coordinates with decimal commas (-1,5E-4, 20,0, …)",
     "replace the decimal commas with points"),  # in exponent form, as a spreadsheet may save a tiny number
    (CSV_2D.replace(",", ";").replace(".", ",").replace('"', ""), "line 1: 5 fields",
     "; its fields are separated by semicolons and its numbers have decimal commas: BigWarp's CSV has commas between "
     "its fields and decimal points in its numbers (a spreadsheet in a comma-decimal locale saves decimal commas); "
     "save it from BigWarp again, or replace the decimal commas with points"),
])
def test_a_header_row_or_another_separator_is_named(tmp_path: Path, text: str, start: str, end: str) -> None:
    with pytest.raises(InputError) as err:
        read_landmarks(_write(tmp_path, "h.csv", text))
    assert err.value.problem.startswith(start) and err.value.problem.endswith(end), err.value.problem


def test_too_few_active(tmp_path: Path) -> None:
    text = "\n".join(CSV_2D.splitlines()[:3]) + "\n"
    with pytest.raises(InputError, match="2 active landmark"):
        read_landmarks(_write(tmp_path, "few.csv", text))


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_landmarks(tmp_path / "none.csv")
    with pytest.raises(InputError, match="empty"):
        read_landmarks(_write(tmp_path, "e.csv", "\n"))


def test_bigwarp_json(tmp_path: Path) -> None:
    text = '''{
  "type": "Thin Plate Spline",
  "landmarks": {
    "type": "BigWarpLandmarks",
    "numDimensions": 2,
    "movingPoints": [[10.0, 20.0], [30.0, 20.0], [10.0, 60.0], [Infinity, Infinity]],
    "fixedPoints": [[1.0, 2.0], [3.0, 2.0], [1.0, 6.0], [4.0, 4.0]],
    "active": [true, true, true, false],
    "names": ["Pt-0", "Pt-1", "Pt-2", "Pt-3"]
  }
}'''
    lm = read_landmarks(_write(tmp_path, "t.json", text))
    assert lm.transform_type == "Thin Plate Spline" and lm.names == ("Pt-0", "Pt-1", "Pt-2")
    np.testing.assert_array_equal(lm.moving, [[10, 20], [30, 20], [10, 60]])
    bad = text.replace("[true, true, true, false]", "[true, true, true, true]")
    with pytest.raises(InputError, match="unpaired"):
        read_landmarks(_write(tmp_path, "bad.json", bad))
    with pytest.raises(InputError, match="not valid JSON"):
        read_landmarks(_write(tmp_path, "broken.json", "{ nope"))


@pytest.mark.parametrize("old, new, message", [
    ('"active": [true, true, true, false]', '"active": null', '"active" must be a list with one entry per point'),
    ('"names": ["Pt-0", "Pt-1", "Pt-2", "Pt-3"]', '"names": 5', '"names" must be a list with one entry per point'),
    ('"active": [true, true, true, false]', '"active": ["true", "true", "true", "false"]', "point 0: active is 'true'"),
    ('"type": "Thin Plate Spline"', '"type": 5', '"type" is 5; expected'),
    ("[1.0, 2.0]", "[true, false]", "point 0: non-numeric coordinate"),
    ("[1.0, 2.0]", '["1", "2"]', "point 0: non-numeric coordinate"),
    ("[1.0, 2.0]", "[1e999, 2.0]", "1e999 is too large for a coordinate"),  # not BigWarp's Infinity (unpaired)
    ("[1.0, 2.0]", f"[{'9' * 400}, 2.0]", f"{'9' * 20}… is too large for a coordinate"),
    ("[1.0, 2.0]", f"[{'9' * 5000}, 2.0]", f"{'9' * 20}… is too large for a coordinate"),  # past int()'s limit
])
def test_bigwarp_json_of_the_wrong_types_is_refused_in_one_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    """Every field of the JSON with a type BigWarp never writes is an InputError naming the field: no traceback, no
    string "false" read as true, no boolean read as a coordinate."""
    text = ('{"type": "Thin Plate Spline", "landmarks": {"movingPoints": [[10.0, 20.0], [30.0, 20.0], [10.0, 60.0], '
            '[5.0, 5.0]], "fixedPoints": [[1.0, 2.0], [3.0, 2.0], [1.0, 6.0], [4.0, 4.0]], '
            '"active": [true, true, true, false], "names": ["Pt-0", "Pt-1", "Pt-2", "Pt-3"]}}')
    assert old in text
    with pytest.raises(InputError, match=re.escape(message)):
        read_landmarks(_write(tmp_path, "t.json", text.replace(old, new, 1)))


@pytest.mark.parametrize("value, text", [
    (1.0, "1.0"), (0.0, "0.0"), (-2.5, "-2.5"), (123.456, "123.456"), (1e-5, "1.0E-5"), (0.001, "0.001"),
    (1.5e7, "1.5E7"), (9999999.0, "9999999.0"), (12345678.9, "1.23456789E7"), (1e21, "1.0E21"),
    (float("inf"), "Infinity"), (0.1 + 0.2, "0.30000000000000004"), (-0.000123, "-1.23E-4"),
])
def test_java_double(value: float, text: str) -> None:
    assert java_double(value) == text


def test_write_bigwarp_csv_round_trip(tmp_path: Path) -> None:
    lm = Landmarks(moving=np.array([[10.5, 2e-5], [1.0, 2.0], [3.0, 4.0]]), fixed=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                   names=("Pt-0", "Pt-1", "Pt-2"))
    path = write_bigwarp_csv(lm, tmp_path / "out.csv")
    assert path.read_text().splitlines()[0] == '"Pt-0","true","10.5","2.0E-5","1.0","2.0"'
    back = read_landmarks(path)
    np.testing.assert_array_equal(back.moving, lm.moving)
    np.testing.assert_array_equal(back.fixed, lm.fixed)
    assert back.names == lm.names


def test_names_in_any_script_are_written_in_utf8_and_read_back(tmp_path: Path) -> None:
    """UTF-8 whatever the platform's code page (Windows' cp1252 cannot write 導管)."""
    points = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 1.0]])
    lm = Landmarks(moving=points, fixed=points, names=("α-Zelle", "導管", "Pt-2"))
    path = write_bigwarp_csv(lm, tmp_path / "out.csv")
    assert path.read_bytes().decode("utf-8").startswith('"α-Zelle","true"')
    assert read_landmarks(path).names == lm.names


def test_fields_separated_by_comma_and_space_are_read(tmp_path: Path) -> None:
    spaced = read_landmarks(_write(tmp_path, "s.csv", CSV_2D.replace('","', '", "')))  # a row edited by hand
    plain = read_landmarks(_write(tmp_path, "p.csv", CSV_2D))
    np.testing.assert_array_equal(spaced.moving, plain.moving)
    assert spaced.names == plain.names


def test_a_trailing_comma_on_each_row_is_no_field(tmp_path: Path) -> None:
    trailing = read_landmarks(_write(tmp_path, "t.csv", CSV_2D.replace("\n", ",\n")))
    plain = read_landmarks(_write(tmp_path, "p.csv", CSV_2D))
    np.testing.assert_array_equal(trailing.moving, plain.moving)
    np.testing.assert_array_equal(trailing.fixed, plain.fixed)


def test_landmarks_switched_off_in_bigwarp_are_written_back(tmp_path: Path) -> None:
    lm = read_landmarks(_write(tmp_path, "in.csv", CSV_2D))
    assert lm.names == ("Pt-0", "Pt-1", "Pt-3", "Pt-5")  # used: the active ones
    lines = write_bigwarp_csv(lm, tmp_path / "out.csv").read_text().splitlines()
    assert lines[-2:] == ['"Pt-2","false","999.0","999.0","99.0","99.0"',
                          '"Pt-4","false","Infinity","Infinity","5.0","5.0"']  # parked, and one unplaced
    assert sorted(lines) == sorted(CSV_2D.splitlines())


# ----------------------------------------------------------------------------- repeated points

_GOOD_ROWS = ['"Pt-0","true","10.0","20.0","1.0","2.0"', '"Pt-1","true","110.0","20.0","11.0","2.0"',
              '"Pt-2","true","10.0","220.0","1.0","22.0"', '"Pt-3","true","60.0","120.0","6.0","12.0"']


@pytest.mark.parametrize("extra, problem", [
    ('"Pt-1","true","110.0","20.0","11.0","2.0"',  # the same row twice (copied in a spreadsheet)
     "duplicate landmarks: 'Pt-1' (line 2) and 'Pt-1' (line 5) are the same landmark (fixed (11, 2), moving (110, 20))"),
    ('"Pt-4","true","80.0","90.0","6.0","12.0"',  # a second moving point for Pt-3's fixed point: a tear
     "duplicate landmarks: 'Pt-3' (line 4) and 'Pt-4' (line 5) share the fixed point (6, 12) but not the moving point"),
    ('"Pt-4","true","10.0","20.0","8.0","9.0"',  # two fixed points pulled to one moving point: a fold
     "duplicate landmarks: 'Pt-0' (line 1) and 'Pt-4' (line 5) share the moving point (10, 20)"),
    ('"Pt-4","true","70.0","70.0","6.000000000001","12.0"',  # 1e-12 apart: a repeat, whatever the rounding
     "duplicate landmarks: 'Pt-3' (line 4) and 'Pt-4' (line 5) share the fixed point (6, 12) but not the moving point"),
], ids=["same-row-twice", "same-fixed-point", "same-moving-point", "near-same-fixed-point"])
def test_repeated_points_are_refused_naming_the_rows(tmp_path: Path, extra: str, problem: str) -> None:
    path = _write(tmp_path, "dup.csv", "\n".join(_GOOD_ROWS + [extra]) + "\n")
    with pytest.raises(InputError) as err:
        read_landmarks(path)
    assert err.value.source == str(path)
    assert err.value.problem == problem + "; each landmark needs its own point in both images (delete the repeat or move it)"
    assert "\n" not in err.value.problem


def test_repeats_in_inactive_rows_and_near_but_distinct_points_are_accepted(tmp_path: Path) -> None:
    rows = _GOOD_ROWS + ['"Pt-4","false","110.0","20.0","11.0","2.0"',  # inactive copy of Pt-1: ignored
                         '"Pt-5","true","60.001","120.001","6.0001","12.0001"']  # 1e-5 of the spread from Pt-3
    lm = read_landmarks(_write(tmp_path, "ok.csv", "\n".join(rows) + "\n"))
    assert lm.names == ("Pt-0", "Pt-1", "Pt-2", "Pt-3", "Pt-5")
    np.testing.assert_array_equal(lm.fixed[-1], [6.0001, 12.0001])


def test_repeated_points_are_refused_in_json_and_the_python_api(tmp_path: Path) -> None:
    text = ('{"type": "BigWarpLandmarks", "numDimensions": 2, "movingPoints": [[1, 2], [5, 2], [1, 9], [1, 2]], '
            '"fixedPoints": [[0, 0], [3, 0], [0, 4], [0, 0]], "active": [true, true, true, true], '
            '"names": ["a", "b", "c", "d"]}')
    with pytest.raises(InputError, match=r"^.*: duplicate landmarks: 'a' \(point 0\) and 'd' \(point 3\) are the same "
                                         r"landmark \(fixed \(0, 0\), moving \(1, 2\)\)"):
        read_landmarks(_write(tmp_path, "dup.json", text))
    with pytest.raises(InputError) as err:
        Landmarks(moving=np.array([[1.0, 2.0], [5.0, 2.0], [1.0, 9.0], [1.0, 2.0]]),
                  fixed=np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [7.0, 7.0]]), names=("a", "b", "c", "a"))
    assert err.value.source is None
    assert err.value.problem.startswith("duplicate landmarks: 'a' (#0) and 'a' (#3) share the moving point (1, 2);")


def test_csv_saved_as_utf16_by_a_spreadsheet_is_read(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(CSV_2D.encode("utf-16"))
    assert read_landmarks(path).names == ("Pt-0", "Pt-1", "Pt-3", "Pt-5")
