"""Ion images given as text tables: CSV, TSV or whitespace-separated text, read by :func:`_read_table` for
:func:`msifusion.io.images.read_ion`.

A table holds either a plain numeric matrix (row = y, column = x; as Cardinal/shinyCardinal or ``numpy.savetxt`` write
it, an optional header row and row-label column are skipped; a first row that counts the columns, as pandas'
``to_csv`` writes it, is a header, except atop a narrow table of integers, where it is data and the image carries a
warning) or a long table with a header naming the x and y columns (``x``/``y``, ``col``/``row``, maybe with a unit:
``x_um``, ``x (µm)``) and one intensity column (pixels absent from the table are 0, as for an off-tissue pixel without
a spectrum; the grid starts at 0 for 0-based coordinates, else at 1, never at the smallest coordinate present; a table
listing under 1 % of an image over 10⁶ pixels is refused; a 3-column table with another header is refused). Numbers
with thousands separators, or whose separator could be one, are refused.
"""

from __future__ import annotations

import codecs
import csv
import io as _io
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from msifusion.errors import InputError
from msifusion.io.units import _unit_to_um


_NA = {"", "na", "nan", "null", "none", "-nan"}


def _cell(token: str) -> str:
    """A cell's text without surrounding blanks and quotes."""
    return token.strip().strip('"').strip()


def _to_float(token: str) -> float | None:
    """A cell's number (NaN for a missing value), None when it is not one."""
    token = _cell(token)
    if token.lower() in _NA:
        return float("nan")
    if "_" in token:  # Python's digit grouping (1_000), which no table writes: read, it tipped a data row to a header
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _comma_float(token: str) -> float | None:
    """:func:`_to_float` for a table written with decimal commas."""
    return _to_float(token.replace(",", "."))


_BARE_INTEGER = re.compile(r"[+-]?\d+")
COUNTED_HEADER_MIN_COLUMNS = 10  # a first row 0…n−1 or 1…n this wide is a header even above integers


def _counts_columns(row: list[str]) -> bool:
    """Whether a row is the column numbers 0…n−1 or 1…n written as plain integers (pandas' default column names)."""
    cells = [_cell(t) for t in row]
    if not all(re.fullmatch(r"[0-9]+", c) for c in cells):
        return False
    values = [int(c) for c in cells]
    return values in (list(range(len(values))), list(range(1, len(values) + 1)))


def _fractional(token: str, number: Callable[[str], float | None]) -> bool:
    """Whether a cell is a number written as a non-integer (with a point, comma or exponent), not a missing value."""
    value = number(token)
    return value is not None and not math.isnan(value) and not _BARE_INTEGER.fullmatch(_cell(token))


def _is_header(rows: list[list[str]], number: Callable[[str], float | None] = _to_float) -> bool:
    """Whether the first row holds names, not pixels: a non-numeric cell; an empty corner above row names followed by
    names or by the column numbers 0…n−1 / 1…n (R's ``write.csv``, pandas' ``to_csv``); or those column numbers alone
    (pandas' ``to_csv(index=False)``) above a number written as a non-integer, or at least
    :data:`COUNTED_HEADER_MIN_COLUMNS` wide. An empty corner before numbers that do not count columns stays data (a
    missing value, refused as NaN), and so does 0, 1, 2 atop a narrow table of integers: small counts may start so."""
    row = rows[0]
    values = [number(t) for t in row]
    if _cell(row[0]) == "" and len(row) > 1:
        rest = values[1:]
        return any(v is None for v in rest) or rest in (list(range(len(rest))), list(range(1, len(rest) + 1)))
    if any(v is None for v in values):
        return True
    return _counts_columns(row) and (len(row) >= COUNTED_HEADER_MIN_COLUMNS
                                     or any(_fractional(t, number) for r in rows[1:] for t in r))


def _read_table(path: Path) -> tuple[np.ndarray, str | None]:
    """A text table's pixels, and a warning when a first row counting the columns was kept as data."""
    text = read_text(path, "text table")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(path, "table is empty")
    sample = lines[:20]
    # ";" or a tab on every line wins over ",": a European export ("0,5;1,25", "0,5<tab>1,25") has decimal commas
    delimiter = next((cand for cand in (";", "\t") if all(cand in ln for ln in sample)), None)
    if delimiter is None:
        delimiter = next((cand for cand in (",", "\t", ";") if any(cand in ln for ln in sample)), None)
    if delimiter is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = list(csv.reader(_io.StringIO("\n".join(lines)), delimiter=delimiter))
    rows = _drop_trailing_delimiter(rows)
    decimal_comma = _decimal_separator(path, rows, delimiter) == "," and delimiter != ","
    number = _comma_float if decimal_comma else _to_float
    header = None
    if _is_header(rows, number):
        header, rows = [_cell(t) for t in rows[0]], rows[1:]
    if not rows:
        raise InputError(path, "table has a header but no data rows")
    if header is not None:
        names = [h.lower() for h in header]
        coordinates = _coordinate_columns(path, names)
        if coordinates is not None:
            return _pivot_long_table(path, names, coordinates, rows, number), None
        if len(names) == 3 and names[0] not in _PANDAS_INDEX and any(number(h) is None for h in header):
            raise InputError(path, f"3-column table headed {', '.join(map(repr, header))} is not a long table "
                                   "msifusion knows: name its columns x, y (or col, row; a unit may follow: x_um, "
                                   "x (µm)) and the intensity; for a 3-pixel-wide image, drop the header")
    warning = _counted_row_warning(path, rows[0]) if header is None and _counts_columns(rows[0]) else None
    # Plain matrix. A first column that is non-numeric, or headed by an empty name (R's
    # write.csv row names), holds row labels.
    if (header is not None and header[0] == "") or all(number(r[0]) is None for r in rows if r):
        rows = [r[1:] for r in rows]
    width = len(rows[0])
    values = []
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(path, f"row {i + 1} has {len(row)} values, expected {width}")
        parsed = [number(t) for t in row]
        if any(v is None for v in parsed):
            bad = next(t for t, v in zip(row, parsed) if v is None)
            raise InputError(path, f"non-numeric value {bad!r} in row {i + 1}")
        values.append(parsed)
    return np.asarray(values, dtype=np.float64), warning


def _counted_row_warning(path: Path, row: list[str]) -> str:
    """The warning for a first row 0…n−1 or 1…n read as pixels (above integers, too narrow to be a header)."""
    counted = ", ".join(_cell(t) for t in row)
    return (f"{path.name}: its first row ({counted}) counts the columns and was read as pixel values; if it is pandas' "
            "column-number header, delete that row (or write the table with header=False)")


def _drop_trailing_delimiter(rows: list[list[str]]) -> list[list[str]]:
    """Rows without the empty last cell that a delimiter ending every row makes (a header may lack it): an empty
    column, not a column of missing values."""
    ends_empty = [len(row) > 1 and not row[-1].strip() for row in rows]
    if all(ends_empty[1:]) and (ends_empty[0] or _is_header(rows)):
        return [row[:-1] if empty else row for row, empty in zip(rows, ends_empty)]
    return rows


# A number with thousands separators for certain: both "." and ",", or several groups of three digits after one.
_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(?:(?:\.\d{3})+,\d*|(?:,\d{3})+\.\d*|(?:\.\d{3}){2,}|(?:,\d{3}){2,})")
# One separator followed by exactly three digits: "12,345", "1.234" are thousands or decimals by their form alone.
_ONE_GROUP = re.compile(r"[+-]?[1-9]\d{0,2}([.,])\d{3}")


def _decimal_separator(path: Path, rows: list[list[str]], delimiter: str | None) -> str:
    """The table's decimal separator, "." or ","; refuses numbers written with thousands separators.

    Excel writes them for cells so formatted: "12,345" beside "987" (English), "1.234" and "16.259,44" (German). A
    number with both separators, or with several groups of three digits, has them for certain. One separator before
    exactly three digits ("12,345") is read as decimal when other numbers show it is the decimal one ("0,5",
    "12,3456"); when every number with a separator has that form, 12345 and 12.345 cannot be told apart and the table
    is refused, as it is when the groups follow the separator the other numbers use for decimals. The delimiter
    settles one separator: a point in a comma-separated table is a decimal point, and a comma in a semicolon-separated
    one a decimal comma (spreadsheets separate with ";" where "," is the decimal separator). Errors quote the cell as
    the file writes it.
    """
    decimal_by_delimiter = {",": ".", ";": ","}.get(delimiter or "")
    names = bool(rows) and any(_to_float(t) is None and re.search(r"[^\W\d_]", _cell(t)) for t in rows[0])
    decimal: dict[str, str] = {}  # separator → the first number in which it can only be a decimal separator
    grouped: dict[str, str] = {}  # separator → the first number with it before exactly three digits
    for row in rows[1:] if names else rows:
        for token in row:
            cell = _cell(token)
            if "." not in cell and "," not in cell:
                continue
            if _THOUSANDS.fullmatch(cell):
                raise InputError(path, f"number {cell!r} has thousands separators; export the table without them")
            group = _ONE_GROUP.fullmatch(cell)
            if group and group.group(1) != decimal_by_delimiter:
                grouped.setdefault(group.group(1), cell)
            elif ("." in cell) != ("," in cell) and _comma_float(cell) is not None:
                decimal.setdefault("," if "," in cell else ".", cell)
    if len(decimal) == 1:
        (sep, example), = decimal.items()
        other = "," if sep == "." else "."
        if other in grouped:
            raise InputError(path, f"number {grouped[other]!r} has a thousands separator (decimals are written with "
                                   f"{sep!r}, as in {example!r}); export the table without thousands separators")
        return sep
    if not decimal and grouped:
        sep, cell = next(iter(grouped.items()))
        whole, fraction = cell.replace(sep, ""), cell.replace(sep, ".")
        raise InputError(path, f"number {cell!r} may be {whole} or {fraction}: every number in the table with a "
                               f"{sep!r} has exactly three digits after it, as with thousands separators; export the "
                               "table without thousands separators, or with more decimals (numpy.savetxt: fmt='%.6g')")
    return "."


_COORDINATE = re.compile(r"(column|col|row|x|y)(?:\s*[(\[]\s*([^()\[\]]*?)\s*[)\]]|[\s_.-]+(\S+))?")
_PIXEL_UNITS = ("px", "pix", "pixel", "pixels", "index", "idx")


def _coordinate_axis(name: str) -> str | None:
    """"x" or "y" for a lower-case column name that is a coordinate: x, y, col or column (= x), row (= y), maybe with
    a unit of pixels or length after it (``x_um``, ``x (µm)``, ``row [px]``); None for any other name."""
    m = _COORDINATE.fullmatch(name.strip())
    if m is None:
        return None
    unit = m.group(2) if m.group(2) is not None else m.group(3)
    if unit is not None and unit not in _PIXEL_UNITS and _unit_to_um(unit) is None:
        return None
    return "y" if m.group(1) in ("y", "row") else "x"


def _coordinate_columns(path: Path, header: list[str]) -> tuple[int, int] | None:
    """The x and y columns of a long table (see :func:`_coordinate_axis`); None when the header does not name both,
    or has under 3 columns. Two columns for one axis (``x`` and ``x_um``) are refused: which holds the pixel?"""
    axes = [_coordinate_axis(name) for name in header]
    xs, ys = ([i for i, a in enumerate(axes) if a == axis] for axis in ("x", "y"))
    if not xs or not ys or len(header) < 3:
        return None
    for axis, found in (("x", xs), ("y", ys)):
        if len(found) > 1:
            raise InputError(path, f"long table has {len(found)} {axis} columns ({', '.join(header[i] for i in found)}); "
                                   "keep one x and one y column, of pixel indices")
    return xs[0], ys[0]


_PANDAS_INDEX = ("", "unnamed: 0")  # the header pandas' to_csv gives its index column
# columns of a long table that number its rows, not intensities: pandas' index, SCiLS Lab's "Spot index"
_INDEX_COLUMNS = (*_PANDAS_INDEX, "index", "spot", "spot index", "spot id", "id", "pixel index")
LONG_TABLE_PIXELS_PER_ROW = 100  # a long table must list at least 1 % of its image's pixels…
LONG_TABLE_FREE_PIXELS = 1_000_000  # …unless the image is no larger than this


def _pivot_long_table(path: Path, header: list[str], coordinates: tuple[int, int], rows: list[list[str]],
                      number: Callable[[str], float | None] = _to_float) -> np.ndarray:
    """A long table (x, y, intensity) as an image: row = y, column = x; absent pixels are 0.

    The grid's origin is fixed, not taken from the pixels present, so that dropped off-tissue
    rows and columns neither shift nor shrink the image: when the smallest x or y present is 0
    the coordinates are 0-based (origin 0), otherwise they are read as 1-based (origin 1, as
    imzML and R number pixels), even when the smallest present coordinate is larger than 1.
    The image reaches the largest x and y present. Negative coordinates are an error, and so are
    coordinates that all advance in steps larger than 1 (positions in µm, which would otherwise
    become a mostly empty image).

    A table may leave out background pixels, but not nearly all of its image: when the image would
    have more than :data:`LONG_TABLE_PIXELS_PER_ROW` pixels per row of the table (under 1 % of it
    listed) and more than :data:`LONG_TABLE_FREE_PIXELS`, it is refused before anything is allocated.
    A genuine sparse export lists every acquired pixel, and a tissue section fills far more than 1 % of
    the raster it was acquired in; one stray coordinate (x=100000 in a 100×100 table) or coordinates
    that are not pixel indices (one row at x=100000 beside a 100×100 image's rows) fail the rule.
    Images up to 10⁶ pixels (8 MB here) always pass.
    """
    ix, iy = coordinates
    others = [i for i in range(len(header)) if i not in (ix, iy) and header[i].strip() not in _INDEX_COLUMNS]
    if len(others) != 1:
        names = ", ".join(header[i] for i in others) or "none"
        raise InputError(path, f"long table needs exactly one intensity column beside {header[ix]} and {header[iy]}, "
                               f"found: {names}")
    iv = others[0]
    for i, row in enumerate(rows):  # a decimal comma in a comma-separated table splits a value in two
        if len(row) != len(header):
            raise InputError(path, f"row {i + 1} has {len(row)} values, expected {len(header)} (the header's columns)")
    cells = [[number(r[i]) for i in (ix, iy, iv)] for r in rows]
    if any(v is None for c in cells for v in c) or any(math.isnan(v) for c in cells for v in c[:2]):
        raise InputError(path, f"long table has a non-numeric {header[ix]}, {header[iy]} or intensity value")
    arr = np.array(cells, dtype=np.float64)
    if not np.allclose(arr[:, :2], np.round(arr[:, :2])):
        raise InputError(path, "x and y columns must hold integer pixel coordinates")
    xy = np.round(arr[:, :2])
    if xy.min() < 0:
        raise InputError(path, f"negative pixel coordinate {xy.min():.0f} in the x/y columns; subtract the smallest x "
                               "and y so that the table starts at 0 (pixel indices)")
    if xy.max() < 2**53:  # exact in float64 and int64; larger ones are refused by the size rule below
        steps = [int(np.gcd.reduce(np.diff(np.unique(c)).astype(np.int64))) for c in xy.T if np.unique(c).size > 1]
        if steps and min(steps) > 1:  # every coordinate a multiple of 25 (say): positions in µm, not pixel indices
            raise InputError(path, f"x and y advance in steps of {min(steps)}, not 1: they look like positions in µm; "
                                   "give pixel indices (the positions divided by the pixel size)")
    origin = 0 if xy.min() == 0 else 1
    width, height = (float(c.max()) + 1 - origin for c in xy.T)
    limit = max(LONG_TABLE_FREE_PIXELS, LONG_TABLE_PIXELS_PER_ROW * len(xy))
    if width * height > limit:
        own = float(np.prod(np.ptp(xy, axis=0) + 1))  # the rows' own bounding box
        if own <= limit:  # dense where they are: a raster index of a larger acquisition, offset from the origin
            raise InputError(path, f"x and y start at ({xy[:, 0].min():.0f}, {xy[:, 1].min():.0f}), far from the "
                                   f"origin: a {width:.6g}×{height:.6g} image for {len(xy)} rows; subtract that offset "
                                   "so that the table starts at 0 or 1")
        n = ", ".join(f"{v:.0f}" if v < 1e12 else f"{v:.3g}" for v in (xy[:, 0].max(), xy[:, 1].max()))
        raise InputError(path, f"x and y reach ({n}), a {width:.6g}×{height:.6g} image ({width * height:.3g} pixels), "
                               f"but the table has {len(xy)} rows, under 1 % of them; a stray coordinate? Remove it, "
                               "or give pixel indices")
    xy = xy.astype(np.int64)
    x, y = (xy - origin).T
    _, first, counts = np.unique(xy, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = int(np.argmax(counts > 1))
        cx, cy = xy[first[k]]
        raise InputError(path, f"pixel x={cx}, y={cy} appears {counts[k]} times in the long table; keep one row per pixel")
    image = np.zeros((y.max() + 1, x.max() + 1))
    image[y, x] = arr[:, 2]
    return image


_COMMA_NUMBER = re.compile(r"\s*(\d+,\d+|\d{1,3}(,\d{3})+(\.\d*)?)\s*")  # 328,9167 or 1,217.5: which comma?
_NUMBER_START = re.compile(r"\s*\"?\s*[-+.\d]")


def _utf16_without_bom(raw: bytes) -> str | None:
    """"utf-16-le" or "utf-16-be" for mostly-ASCII UTF-16 text (nearly every character's high byte NUL), else None."""
    for high, encoding in ((raw[1::2], "utf-16-le"), (raw[0::2], "utf-16-be")):
        if high and high.count(0) >= 0.9 * len(high):
            return encoding
    return None


def read_text(path: Path, what: str) -> str:
    """A small text file's contents, whichever way a lab's software saved it: UTF-32 or UTF-16 with a byte-order mark
    (PowerShell's ``>``, Excel's "Unicode text"), UTF-16 without one (mostly ASCII text, so nearly every other byte
    is NUL), else UTF-8, else Latin-1, which reads the digits, separators and ASCII names of any Windows code page
    alike (only those are read from it). Any other file with NUL bytes in it is refused as binary."""
    try:
        with path.open("rb") as fh:
            head = fh.read(1 << 16)  # judged first, so that an .ibd given by mistake is not read whole
            boms = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
            if b"\0" in head and not head.startswith(boms) and _utf16_without_bom(head) is None:
                raise InputError(path, f"cannot read {what}: it is a binary file, not text")
            raw = head + fh.read()
    except OSError as exc:
        raise InputError(path, f"cannot read {what} ({exc.strerror or exc})") from None
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: UTF-32-LE's mark starts alike
        return raw.decode("utf-32", errors="replace")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    if b"\0" in raw:
        encoding = _utf16_without_bom(raw) if len(raw) % 2 == 0 else None
        if encoding is None:
            raise InputError(path, f"cannot read {what}: it is a binary file, not text")
        return raw.decode(encoding, errors="replace")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_MZ_NAME = re.compile(r"m\s*/?\s*z", re.I)  # m/z, mz, M/Z (Da)
_MASS_NAME = re.compile(r"mass", re.I)  # taken where no column says m/z
_OTHER_QUANTITY = re.compile(r"error|neutral|delta|shift", re.I)  # mass error (ppm), neutral mass, Δm/z: not the ion's
_BOUND_NAME = re.compile(r"(?<![a-z])(low|high|min|max|start|end|lower|upper)(?![a-z])", re.I)  # mz_low, m/z max
_TOLERANCE_NAME = re.compile(r"(?<![a-z])(tol|tolerance|ppm|window|width|interval)(?![a-z])|^\s*m?da\s*([(\[].*)?$",
                             re.I)


def _mz_column(path: Path, names: list[str]) -> int:
    """The column an m/z list's header row names (``names``, one per column, empty for an unnamed one): the one named
    m/z, else the one named a mass, else the first column. A header naming two (observed and theoretical m/z), a
    tolerance, or window bounds without a centre, is refused: which to read cannot be told, or the list cannot carry
    them and its m/z would be read with the wrong width or around the wrong centre."""
    own = [(i, n) for i, n in enumerate(names) if n and not _OTHER_QUANTITY.search(n)]
    tolerances = [n for _, n in own if _TOLERANCE_NAME.search(n)]
    if tolerances:
        raise InputError(path, f"its header names a tolerance column ({tolerances[0]}), which is not read: list m/z "
                               "only and give their window with --tol (one run per tolerance)")
    for pattern in (_MZ_NAME, _MASS_NAME):
        centres = [i for i, n in own if pattern.search(n) and not _BOUND_NAME.search(n)]
        if len(centres) > 1:
            named = ", ".join(names[i] for i in centres)
            raise InputError(path, f"its header names {len(centres)} m/z columns ({named}): keep the one to extract, "
                                   "or give the m/z on the command line")
        if centres:
            return centres[0]
        bounds = [n for _, n in own if pattern.search(n) and _BOUND_NAME.search(n)]
        if bounds:
            raise InputError(path, f"its header names m/z window bounds ({', '.join(bounds)}) and no centre: list "
                                   "each window's centre as m/z and give its half-width with --tol")
    return 0


def _split_row(line: str, delimiter: str | None) -> list[str]:
    """A row's cells: CSV quoting honoured (a quoted ``"1,217.5"`` is one cell), blanks as one delimiter if none."""
    if delimiter is None:
        return [_cell(c) for c in line.split()]
    return [_cell(c) for c in next(csv.reader([line], delimiter=delimiter))]


def _header_names(line: str, delimiter: str | None, columns: int) -> list[str]:
    """A header row's names, one per column of its first data row (``columns``): split as the data are, but a
    blank-separated header whose names hold single spaces (``m / z   mean intensity``) by runs of blanks."""
    if delimiter is not None:
        return _split_row(line, delimiter)
    words, spaced = line.split(), [_cell(c) for c in re.split(r"\s{2,}", line.strip())]
    return spaced if len(spaced) == columns and len(words) != columns else [_cell(c) for c in words]


def read_mz_list(path: Path) -> list[float]:
    """m/z values from a text file: one per line, or a column of a CSV or TSV; ``#`` lines are skipped, so that what
    ``msifusion peaks`` prints, saved to a file, can be given as it is.

    A header row (a first row that does not start with a number) chooses the column: the one it names m/z (``m/z``,
    ``mz``), else the one it names a mass (not a mass error or a neutral mass), else the first column; a header
    naming two, a tolerance, or window bounds (``mz_low``) without a centre, is refused; rows of empty cells are
    skipped; in ``;``-separated rows a comma is the decimal comma (``1217,5161``). Without a header the first column
    is read, and blank-separated rows must hold as many numbers each (``500.1 600.2`` then ``700.3`` is refused, not
    read as 500.1 and 700.3; a ``#`` comment after them is no number). A file of one row of three or more numbers and
    no header (``328.9167 345 344``, or with commas, tabs or semicolons) lists them all: a list typed on one line; one
    of two numbers and no header is refused, as it may be an m/z and its intensity (``peaks`` output without its
    header) or two m/z. A lone number with a comma (``328,9167``, ``1,217.5``) is refused as ambiguous unless a
    comma-separated header says the comma separates columns."""
    text = read_text(path, "the m/z list")
    values: list[float] = []
    cells: list[str] = []  # the last row's cells
    header: str | None = None  # the header row's delimiter, once one was seen ("" for none)
    header_line: str | None = None  # the header row, until the first data row says how many columns it names
    column, label = 0, "first"
    widths: dict[int, int] = {}  # without a header, blank-separated: numbers per row → the first line with that many
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        delimiter = next((d for d in ("\t", ";") if d in line), None)
        if header is None and not values and not _NUMBER_START.match(line):
            header, header_line = delimiter or ("," if "," in line else ""), line
            continue
        if delimiter is None and "," in line:
            if header != "," and _COMMA_NUMBER.fullmatch(line):
                raise InputError(path, f"line {number}: {line.strip()!r} is ambiguous; write m/z with a decimal "
                                       "point, one per line")
            delimiter = ","
        if delimiter is None:
            line = re.sub(r"\s#.*$", "", line)  # a comment after the numbers
        cells = _split_row(line, delimiter)
        if not any(cells):  # a spreadsheet's empty rows (",,"), which it does not show
            continue
        if header_line is not None:
            names = _header_names(header_line, header or None, len(cells))
            column = _mz_column(path, names)
            label, header_line = names[column] if column < len(names) and names[column] else "first", None
        if column >= len(cells) or not cells[column]:
            raise InputError(path, f"line {number} has no value in the {label} column")
        if header is None and delimiter is None:
            widths.setdefault(sum(_to_float(c) is not None for c in cells), number)
        first = cells[column]
        value = _to_float(first)
        if value is None and delimiter == ";" and re.fullmatch(r"\d+,\d+", first):
            value = _comma_float(first)  # spreadsheets separate with ";" where the comma is the decimal one
        if value is None and _COMMA_NUMBER.fullmatch(first):
            raise InputError(path, f"line {number}: {first!r} has a decimal comma or a thousands separator; write m/z "
                                   "with a decimal point and no separator")
        if value is None or not (math.isfinite(value) and value > 0):
            raise InputError(path, f"line {number}: {first!r} is not an m/z (a positive number)")
        values.append(value)
    if not values:
        raise InputError(path, "lists no m/z")
    if len(widths) > 1:
        (a, first_line), (b, other_line) = sorted(widths.items(), key=lambda kv: kv[1])[:2]
        raise InputError(path, f"line {first_line} holds {a} numbers and line {other_line} {b}, and no header names "
                               "the m/z column: list one m/z per line, or add a header row naming it m/z")
    row = [_to_float(c) for c in cells if c]
    if header is None and len(values) == 1 and len(row) > 1 and all(v is not None and math.isfinite(v) and v > 0
                                                                     for v in row):
        if len(row) == 2:
            raise InputError(path, f"holds one row of two numbers ({' and '.join(cells[:2])}) and no header: an m/z "
                                   "and its intensity, or two m/z? List one m/z per line")
        return row
    return values
