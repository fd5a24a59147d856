"""BigWarp (Fiji) landmarks: read the CSV and JSON forms, write the CSV form.

CSV, as BigWarp saves it: no header, every field quoted, one landmark per row:
``"name","active","moving x","moving y","fixed x","fixed y"`` for 2-D; 3-D rows have 8 fields
(x, y, z each) and are accepted when z is constant on each side (it is dropped). Rows of 7 or
9 fields (an integer id after ``active``, written by some BigWarp versions) are read too.
Only rows whose active field is ``true`` count; a landmark placed in one image only holds
``Infinity`` in the other image's columns and must not be active.
Two active landmarks at the same fixed or the same moving point (within 1e-9 of the points'
spread) are refused, naming their rows: a thin-plate spline through them tears the image apart.

JSON: BigWarp's transform export ``{"type": "Thin Plate Spline", "landmarks": {...}}`` or its
bare landmarks object ``{"type": "BigWarpLandmarks", "numDimensions", "movingPoints",
"fixedPoints", "active", "names"}``.

Coordinates stay in each image's calibrated units as Fiji saw them (pixel index × pixel size
+ origin, pixel centres at integer indices; pixels for uncalibrated images).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np

from msifusion.errors import InputError
from msifusion.io.tables import read_text

MIN_LANDMARKS = 3
DUPLICATE_TOLERANCE = 1e-9  # points closer than this × the diagonal of their bounding box count as one point


@dataclass(frozen=True)
class Landmarks:
    """Active landmark pairs: ``moving`` (n, 2) optical points, ``fixed`` (n, 2) ion-grid points.

    ``rows``: where each landmark came from in its file (e.g. "line 4"), for messages; None: by name. ``inactive``:
    the file's landmarks switched off in BigWarp, (name, moving x, y, fixed x, y) each (Infinity where unplaced),
    unused but written back by :func:`write_bigwarp_csv`, so that points parked in BigWarp survive a round trip.
    """

    moving: np.ndarray
    fixed: np.ndarray
    names: tuple[str, ...]
    source: Path | None = None
    transform_type: str | None = None  # from BigWarp's JSON, e.g. "Thin Plate Spline"
    rows: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    inactive: tuple[tuple[str, float, float, float, float], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        m = np.asarray(self.moving, dtype=np.float64).reshape(-1, 2)
        f = np.asarray(self.fixed, dtype=np.float64).reshape(-1, 2)
        if m.shape != f.shape or len(self.names) != len(m):
            raise ValueError("moving, fixed and names must have one entry per landmark")
        object.__setattr__(self, "moving", m)
        object.__setattr__(self, "fixed", f)
        if self.rows is not None:
            labels = [f"{n!r} ({row})" for n, row in zip(self.names, self.rows)]
        else:
            repeated = Counter(self.names)
            labels = [f"{n!r} (#{i})" if repeated[n] > 1 else repr(n) for i, n in enumerate(self.names)]
        problem = _duplicate_problem(m, f, labels)
        if problem:
            raise InputError(self.source, problem)

    def __len__(self) -> int:
        return len(self.names)


def _coincident(points: np.ndarray) -> list[list[int]]:
    """Groups (ascending indices, groups in order of first index) of points that coincide: closer than
    ``DUPLICATE_TOLERANCE`` × their bounding-box diagonal (exactly equal when they all coincide)."""
    if len(points) < 2 or not np.isfinite(points).all():
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    tol = DUPLICATE_TOLERANCE * float(np.hypot(*np.ptp(points, axis=0)))
    pairs = cKDTree(points).query_pairs(tol, output_type="ndarray")
    if len(pairs) == 0:
        return []
    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(label):
        groups.setdefault(int(g), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _duplicate_problem(moving: np.ndarray, fixed: np.ndarray, labels: list[str]) -> str | None:
    """One line naming landmarks that repeat a fixed or a moving point, or None when all are distinct.

    A thin-plate spline through a repeated point does not fail: it silently tears the image
    apart (same fixed point, different moving points) or is ill-posed, so repeats are refused.
    """
    def at(p: np.ndarray) -> str:
        return f"({p[0]:g}, {p[1]:g})"

    def who(group: list[int]) -> str:
        names = [labels[i] for i in group]
        return ", ".join(names[:-1]) + " and " + names[-1]

    items = []
    fixed_groups = _coincident(fixed)
    moving_groups = _coincident(moving)
    moving_sets = [set(g) for g in moving_groups]
    for g in fixed_groups:
        if any(set(g) <= s for s in moving_sets):
            items.append(f"{who(g)} are the same landmark (fixed {at(fixed[g[0]])}, moving {at(moving[g[0]])})")
        else:
            items.append(f"{who(g)} share the fixed point {at(fixed[g[0]])} but not the moving point")
    fixed_sets = [set(g) for g in fixed_groups]
    for g in moving_groups:
        if not any(set(g) <= s for s in fixed_sets):
            items.append(f"{who(g)} share the moving point {at(moving[g[0]])}")
    if not items:
        return None
    more = f"; and {len(items) - 3} more" if len(items) > 3 else ""
    return (f"duplicate landmarks: {'; '.join(items[:3])}{more}; each landmark needs its own point in both images "
            "(delete the repeat or move it)")


def read_landmarks(path: str | Path) -> Landmarks:
    """Read BigWarp landmarks (``.csv`` or ``.json``); at least 3 active pairs are required."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "landmarks file not found")
    if not path.is_file():
        raise InputError(path, "landmarks path is not a file")
    text = read_text(path, "landmarks")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        lm = _parse_json(path, text)
    else:
        lm = _parse_csv(path, text)
    if len(lm) < MIN_LANDMARKS:
        raise InputError(path, f"{len(lm)} active landmark(s); a transform needs at least {MIN_LANDMARKS}")
    return lm


def _number(path: Path, token: str, line: int) -> float:
    t = token.strip()
    try:
        value = float(t)  # accepts "Infinity", "-Infinity", "NaN"
    except ValueError:
        raise InputError(path, f"line {line}: {token!r} is not a number") from None
    if math.isinf(value) and t.lstrip("+-").lower() not in ("inf", "infinity"):
        raise InputError(path, f"line {line}: {token!r} is too large for a coordinate")
    return value


def _is_number(token: str) -> bool:
    try:
        float(token.strip())
    except ValueError:
        return False
    return True


def _active(path: Path, token: str, line: int) -> bool:
    t = token.strip().lower()
    if t in ("true", "false"):
        return t == "true"
    raise InputError(path, f"line {line}: active field is {token!r}; expected true or false")


def _collect(path: Path, rows: list[tuple[int, str, bool, list[float], list[float]]], transform_type: str | None,
             row_word: str = "line") -> Landmarks:
    """rows: (line, name, active, moving coords, fixed coords) → Landmarks (2-D, active only).

    ``row_word`` names the first field in messages: ``line`` (CSV) or ``point`` (JSON index).
    """
    dims = {len(r[3]) for r in rows}
    if len(dims) > 1:
        raise InputError(path, "rows mix 2-D and 3-D landmarks")
    names, moving, fixed, where, inactive = [], [], [], [], []
    zs: dict[str, set[float]] = {"moving": set(), "fixed": set()}
    for line, name, active, mv, fx in rows:
        if not active:
            inactive.append((name, *mv[:2], *fx[:2]))
            continue
        if any(math.isinf(v) for v in mv + fx):
            raise InputError(path, f"{row_word} {line}: landmark {name!r} is active but unpaired (Infinity); "
                             "place it in both images or deactivate it")
        if any(math.isnan(v) for v in mv + fx):
            raise InputError(path, f"{row_word} {line}: landmark {name!r} has a NaN coordinate")
        if len(mv) == 3:
            zs["moving"].add(mv[2])
            zs["fixed"].add(fx[2])
        names.append(name)
        moving.append(mv[:2])
        fixed.append(fx[:2])
        where.append(f"{row_word} {line}")
    for side, values in zs.items():
        if len(values) > 1:
            raise InputError(path, f"3-D landmarks with varying {side} z ({min(values):g}–{max(values):g}); "
                             "only 2-D registration (constant z) is supported")
    return Landmarks(np.array(moving, dtype=np.float64).reshape(-1, 2), np.array(fixed, dtype=np.float64).reshape(-1, 2),
                     tuple(names), path, transform_type, tuple(where), tuple(inactive))


DECIMAL_COMMAS = ("BigWarp's CSV has commas between its fields and decimal points in its numbers (a spreadsheet in a "
                  "comma-decimal locale saves decimal commas); save it from BigWarp again, or replace the decimal "
                  "commas with points")


def _parse_csv(path: Path, text: str) -> Landmarks:
    rows = []
    reader = csv.reader(text.splitlines(), skipinitialspace=True)  # '"Pt-0", "true", …' edited by hand
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) in (7, 9) and not fields[-1].strip():  # a trailing comma, as spreadsheets may save a row
            fields = fields[:-1]
        n = len(fields)
        if n in (6, 8):
            coords = fields[2:]
        elif n in (7, 9):
            try:
                int(fields[2])
            except ValueError:
                raise InputError(path, f"line {line}: {n} fields but the third ({fields[2]!r}) is not an integer id") from None
            coords = fields[3:]
        else:
            raw = ",".join(fields)
            other = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs"))
                          if len(raw.split(sep)) in (6, 7, 8, 9)), None)
            hint = f"; its fields are separated by {other}: BigWarp's CSV uses commas" if other else ""
            if other == "semicolons" and re.search(r"\d,\d", raw):
                hint = f"; its fields are separated by semicolons and its numbers have decimal commas: {DECIMAL_COMMAS}"
            raise InputError(path, f"line {line}: {n} fields; BigWarp rows have 6 (2-D) or 8 (3-D): "
                             f"name, active, moving x, y[, z], fixed x, y[, z]{hint}")
        commas = [t.strip() for t in coords if re.fullmatch(r"\s*[-+]?\d+,\d+(?:[eE][-+]?\d+)?\s*", t)]
        if commas:
            raise InputError(path, f"line {line}: coordinates with decimal commas ({', '.join(commas[:2])}"
                                   f"{', …' if len(commas) > 2 else ''}): {DECIMAL_COMMAS}")
        if not any(_is_number(t) for t in coords):
            raise InputError(path, f"line {line} holds no coordinates ({', '.join(f.strip() for f in fields)}): a "
                                   "header row? BigWarp's landmark CSV has none; delete it")
        active = _active(path, fields[1], line)
        values = [_number(path, t, line) for t in coords]
        d = len(values) // 2
        rows.append((line, fields[0], active, values[:d], values[d:]))
    if not rows:
        raise InputError(path, "landmarks file is empty")
    return _collect(path, rows, None)


def _parse_json(path: Path, text: str) -> Landmarks:
    def finite(token: str) -> float:  # 1e999 or a 400-digit integer: not BigWarp's Infinity (an unplaced point)
        if not math.isfinite(value := float(token)):
            raise InputError(path, f"{token[:20]}{'…' if len(token) > 20 else ''} is too large for a coordinate")
        return value

    try:  # integers of over 300 digits as floats: int() refuses over 4300 digits, float() overflows past 308
        obj = json.loads(text, parse_float=finite, parse_int=lambda t: int(t) if len(t) <= 300 else finite(t))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(path, "JSON landmarks must be an object")
    transform_type = obj.get("type") if "landmarks" in obj else None
    if transform_type is not None and not isinstance(transform_type, str):
        raise InputError(path, f"\"type\" is {transform_type!r}; expected the transform's name as a string")
    lm = obj.get("landmarks", obj)
    if not isinstance(lm, dict) or "movingPoints" not in lm or "fixedPoints" not in lm:
        raise InputError(path, "JSON has no movingPoints / fixedPoints (BigWarp landmarks)")
    mv, fx = lm["movingPoints"], lm["fixedPoints"]
    if not isinstance(mv, list) or not isinstance(fx, list) or len(mv) != len(fx):
        raise InputError(path, "movingPoints and fixedPoints must be lists of equal length")
    active = lm.get("active", [True] * len(mv))
    names = lm.get("names", [f"Pt-{i}" for i in range(len(mv))])
    for key, values in (("active", active), ("names", names)):
        if not isinstance(values, list) or len(values) != len(mv):
            raise InputError(path, f"\"{key}\" must be a list with one entry per point ({len(mv)})")
    rows = []
    for i, (m, f, a, name) in enumerate(zip(mv, fx, active, names)):
        if not (isinstance(m, list) and isinstance(f, list) and len(m) == len(f) and len(m) in (2, 3)):
            raise InputError(path, f"point {i}: expected [x, y] or [x, y, z] in both images")
        if not isinstance(a, bool):
            raise InputError(path, f"point {i}: active is {a!r}; expected true or false")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in m + f):
            raise InputError(path, f"point {i}: non-numeric coordinate")
        rows.append((i, str(name), a, [float(v) for v in m], [float(v) for v in f]))
    return _collect(path, rows, transform_type, "point")


# ----------------------------------------------------------------------------- writing


def java_double(x: float) -> str:
    """Java's ``Double.toString`` (what BigWarp writes): shortest digits, ``1.0E-5`` style."""
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign, digits, exp = Decimal(repr(x)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + exp  # decimal point position relative to the digit string
    s = "-" if sign else ""
    if 1e-3 <= abs(x) < 1e7:
        if point <= 0:
            return f"{s}0.{'0' * (-point)}{ds}"
        if point >= len(ds):
            return f"{s}{ds}{'0' * (point - len(ds))}.0"
        return f"{s}{ds[:point]}.{ds[point:]}"
    mant = ds[0] + "." + (ds[1:] or "0")
    return f"{s}{mant}E{point - 1}"


def write_bigwarp_csv(landmarks: Landmarks, path: str | Path) -> Path:
    """Write 2-D landmarks as BigWarp does: every field quoted, no header; the active ones, then those switched off
    in the file they were read from (:attr:`Landmarks.inactive`)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:  # not the platform's code page: names in any script
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for name, m, f in zip(landmarks.names, landmarks.moving, landmarks.fixed):
            writer.writerow([name, "true", *(java_double(v) for v in m), *(java_double(v) for v in f)])
        for name, *coords in landmarks.inactive:
            writer.writerow([name, "false", *(java_double(v) for v in coords)])
    return path
