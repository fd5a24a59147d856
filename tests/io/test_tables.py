"""Ion images given as text tables (msifusion.io.tables), through read_ion."""

import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.images import read_ion


def test_csv_with_header_and_row_labels_semicolons(tmp_path):
    path = tmp_path / "cardinal.csv"
    path.write_text('"","V1","V2","V3"\n"1";1;2;3\n"2";4;5;6\n'.replace(",", ";"))
    np.testing.assert_array_equal(read_ion(path).pixels, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("text", [
    ",0,1,2\n0,1,2,3\n1,4,5,6\n",  # pandas DataFrame.to_csv(): empty corner, column numbers, row index
    ",1,2,3\n1,1,2,3\n2,4,5,6\n",  # numbered from 1
    '"","V1","V2","V3"\n"1",1,2,3\n"2",4,5,6\n',  # R's write.csv
])
def test_matrix_exports_skip_their_labels(tmp_path, text):
    path = tmp_path / "export.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_ion(path).pixels, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("text, shape", [("0,1,2\n1,2,3\n4,5,6\n", (3, 3)), ("1,2,3,4\n0,5,2,1\n3,3,0,2\n", (3, 4))])
def test_a_first_row_of_small_integers_is_data(tmp_path, text, shape):
    path = tmp_path / "counts.csv"
    path.write_text(text)
    assert read_ion(path).pixels.shape == shape


@pytest.mark.parametrize("text, expected, warned", [
    ("0,1,2\n5,6,7\n8,9,10\n", [[0, 1, 2], [5, 6, 7], [8, 9, 10]], True),  # maybe pandas' header: kept, told
    ("3,1,2\n5,6,7\n8,9,10\n", [[3, 1, 2], [5, 6, 7], [8, 9, 10]], False),  # an ordinary table of integers
    (",".join(map(str, range(10))) + "\n" + ",".join(["7"] * 10) + "\n" + ",".join(["8"] * 10) + "\n",
     [[7] * 10, [8] * 10], False),  # wide: the counted header is dropped
])
def test_a_first_row_counting_the_columns_kept_as_data_is_warned_about(tmp_path, text, expected, warned):
    path = tmp_path / "pandas.csv"
    path.write_text(text)
    image = read_ion(path)
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.warnings == (("pandas.csv: its first row (0, 1, 2) counts the columns and was read as pixel values; "
                               "if it is pandas' column-number header, delete that row (or write the table with "
                               "header=False)",) if warned else ())


def test_an_empty_corner_before_data_is_a_missing_value(tmp_path):
    path = tmp_path / "nan_corner.csv"
    path.write_text(",2,3,4\n5,6,7,8\n9,10,11,12\n")
    with pytest.raises(InputError, match=r"1 NaN/inf pixel\(s\), the first at row 0, column 0 of the image \(0-based\)"):
        read_ion(path)


def test_long_table_with_pandas_index_column(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(",x,y,intensity\n0,1,1,5\n1,2,1,6\n2,2,2,7\n")
    np.testing.assert_array_equal(read_ion(path).pixels, [[5, 6], [0, 7]])


@pytest.mark.parametrize("text, message", [
    ("x,y,mz_885,tic\n1,1,5,100\n2,1,6,90\n", "exactly one intensity column beside x and y, found: mz_885, tic"),
    ("x,y,intensity\n1,1,5\n2,1,6\n1,1,999\n", "pixel x=1, y=1 appears 2 times"),
    ("x,y,v\n1,1,5\n1,1,6\n2,1,1\n2,1,1\n2,1,1\n", "pixel x=1, y=1 appears 2 times"),
    ("x,y,v\n0,0,5\n25,0,6\n50,25,7\n", "advance in steps of 25, not 1: they look like positions in µm"),
    ("x,y,intensity\n0,0,1,5\n1,0,2,5\n0,1,3\n1,1,4\n", "row 1 has 4 values, expected 3"),  # decimal commas
    ("x,y,intensity\n0,0,1\n1,0\n", "row 2 has 2 values, expected 3"),
])
def test_ambiguous_long_tables_are_refused(tmp_path, text, message):
    path = tmp_path / "long.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_ion(path)


def test_long_table_is_pivoted_with_missing_pixels_zero(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("x,y,intensity\n1,1,5\n2,1,6\n3,2,7\n")
    np.testing.assert_array_equal(read_ion(path).pixels, [[5, 6, 0], [0, 0, 7]])


@pytest.mark.parametrize("rows, expected", [
    # 1-based (imzML, R), off-tissue first row and column dropped: they stay, as zeros
    ("2,2,5\n3,2,6\n3,3,7\n", [[0, 0, 0], [0, 5, 6], [0, 0, 7]]),
    # 0-based: a 0 anywhere decides
    ("0,1,5\n2,1,6\n2,2,7\n", [[0, 0, 0], [5, 0, 6], [0, 0, 7]]),
    # smallest coordinate larger than 1: still 1-based
    ("3,4,5\n4,4,6\n", [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 5, 6]]),
])
def test_long_table_keeps_its_origin_when_edge_pixels_are_absent(tmp_path, rows, expected):
    path = tmp_path / "long.csv"
    path.write_text("x,y,intensity\n" + rows)
    np.testing.assert_array_equal(read_ion(path).pixels, expected)


def test_a_scils_lab_export_with_its_spot_index_is_a_long_table(tmp_path):
    path = tmp_path / "scils.csv"
    path.write_text("# Exported from SCiLS Lab\nSpot index;x;y;885.55\n0;0;0;1.5\n1;1;0;2.5\n2;0;1;3.5\n3;1;1;4.5\n")
    np.testing.assert_array_equal(read_ion(path).pixels, [[1.5, 2.5], [3.5, 4.5]])


def test_long_table_refuses_negative_coordinates(tmp_path):
    path = tmp_path / "neg.csv"
    path.write_text("x,y,intensity\n-1,0,5\n1,1,6\n")
    with pytest.raises(InputError, match="negative pixel coordinate -1 in the x/y columns; subtract the smallest") as info:
        read_ion(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    "content, message",
    [("1,2\n3\n", "row 2 has 1 values"), ("1,2\n3,abc\n", "non-numeric"), ("1,NA\n3,4\n", "NaN"), ("0,0\n0,0\n", "all zero")],
)
def test_bad_tables(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_ion(path)
    assert "bad.csv" in str(info.value)


# ----------------------------------------------------------------------------- ion tables


@pytest.mark.parametrize("text, expected", [
    ("1,2,3,\n4,5,6,\n", [[1, 2, 3], [4, 5, 6]]),
    ("a\tb\tc\td\n1\t2\t3\t4\t\n5\t6\t7\t8\t\n", [[1, 2, 3, 4], [5, 6, 7, 8]]),  # header without the trailing tab
    ("x,y,intensity,\n1,1,5,\n2,1,6,\n1,2,7,\n2,2,8,\n", [[5, 6], [7, 8]]),
])
def test_trailing_delimiter_is_no_column(tmp_path, text, expected):
    path = tmp_path / "trailing.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_ion(path).pixels, expected)


@pytest.mark.parametrize("text, expected", [
    ("0,5;1,25;2\n3;4,75;-5,5\n", [[0.5, 1.25, 2], [3, 4.75, -5.5]]),
    ('"";"V1";"V2"\n"1";0,5;1,25;\n"2";2;3,5;\n', [[0.5, 1.25], [2, 3.5]]),  # R write.csv2, trailing ';'
    ("x;y;intensity\n1;1;0,5\n2;1;1,5\n1;2;2\n2;2;2,5\n", [[0.5, 1.5], [2, 2.5]]),
    ("1;2\n0.5;1,000\n2;3\n", None),  # points and commas: not decimal commas, the comma is refused
    ("0.5;1.25\n2;3\n", [[0.5, 1.25], [2, 3]]),
    ("0,5\t1,25\n3\t4,75\n", [[0.5, 1.25], [3, 4.75]]),  # a tab-separated export with decimal commas
])
def test_european_csv(tmp_path, text, expected):
    path = tmp_path / "european.csv"
    path.write_text(text)
    if expected is None:
        with pytest.raises(InputError, match="non-numeric value '1,000'"):
            read_ion(path)
    else:
        np.testing.assert_allclose(read_ion(path).pixels, expected)


def test_python_digit_grouping_is_not_a_number(tmp_path):
    """Python's float() reads 1_000 as 1000; the first row of numbers was then taken for a header and dropped: a 3×3
    table read as 2×3."""
    path = tmp_path / "ion.csv"
    path.write_text("1,2,3\n4,1_000,5\n6,7,8\n")
    with pytest.raises(InputError, match="non-numeric value '1_000' in row 2"):
        read_ion(path)


def test_long_table_with_a_stray_coordinate_is_refused_before_allocating(tmp_path):
    path = tmp_path / "stray.csv"
    path.write_text("x,y,value\n1,1,3\n2,2,5\n100000,100000,1\n")  # 10¹⁰ pixels, 80 GB as float64
    with pytest.raises(InputError) as info:
        read_ion(path)
    assert info.value.source == str(path)
    assert info.value.problem.startswith("x and y reach (100000, 100000), a 100000×100000 image (1e+10 pixels), "
                                         "but the table has 3 rows")


def test_sparse_long_tables_of_real_acquisitions_pass(tmp_path):
    # A 1200×1000 raster (over 10⁶ pixels) holding two small sections, radius 60, at opposite corners; only their
    # pixels are listed: 1.9 % of the image, 53 pixels per row.
    yy, xx = np.mgrid[1:1001, 1:1201]
    on = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2) | ((yy - 940) ** 2 + (xx - 1140) ** 2 <= 60**2)
    on[999, 1199] = True  # the raster's last pixel, so the image spans all of it
    values = (xx + 10000 * yy)[on]
    path = tmp_path / "sparse.csv"
    path.write_text("x,y,value\n" + "".join(f"{x},{y},{v}\n" for x, y, v in zip(xx[on], yy[on], values)))
    pixels = read_ion(path).pixels
    assert pixels.shape == (1000, 1200) and np.count_nonzero(pixels) == on.sum() == 22579
    assert pixels[939, 1139] == 1140 + 10000 * 940 and pixels[0, 0] == 0
    # Up to 10⁶ pixels nothing is refused, however few rows: a 1000×1000 image from three.
    path.write_text("x,y,value\n1,1,3\n2,2,5\n1000,1000,1\n")
    assert read_ion(path).pixels.shape == (1000, 1000)


def test_a_long_table_offset_far_from_the_origin_is_told_to_subtract_it(tmp_path):
    path = tmp_path / "offset.csv"
    yy, xx = np.mgrid[2001:2101, 1001:1101]
    lines = ["x,y,value"] + [f"{x},{y},1" for x, y in zip(xx.ravel(), yy.ravel())]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"x and y start at \(1001, 2001\), far from the origin: a 1100×2100 image "
                                         r"for 10000 rows; subtract that offset"):
        read_ion(path)


# ----------------------------------------------------------------------------- table headers, thousands, long tables


@pytest.mark.parametrize("text, expected", [
    ("0,1,2\n1.5,2.5,3\n4,5,6.25\n", [[1.5, 2.5, 3], [4, 5, 6.25]]),  # pandas DataFrame(a).to_csv(index=False)
    ("1,2,3\n1.5,2.5,3\n4,5,6.25\n", [[1.5, 2.5, 3], [4, 5, 6.25]]),  # numbered from 1
    ("0;1;2\n0,5;1;2\n3;4;5\n", [[0.5, 1, 2], [3, 4, 5]]),  # pandas with sep=";", decimal=","
    ("0,1,2\n1e3,2,3\n4,5,6\n", [[1000, 2, 3], [4, 5, 6]]),  # an exponent is no integer as written
    (",".join(map(str, range(10))) + "\n" + ",".join(map(str, range(10, 20))) + "\n" + ",".join(["7"] * 10) + "\n",
     [list(range(10, 20)), [7] * 10]),  # wide: a header even above integers
])
def test_a_first_row_counting_the_columns_is_a_header(tmp_path, text, expected):
    path = tmp_path / "pandas.csv"
    path.write_text(text)
    np.testing.assert_allclose(read_ion(path).pixels, expected)


@pytest.mark.parametrize("text, problem", [
    ("12,345\t987\n1,001\t5\n",  # English Excel, tab-separated
     "number '12,345' may be 12345 or 12.345: every number in the table with a ',' has exactly three digits after "
     "it, as with thousands separators; export the table without thousands separators, or with more "
     "decimals (numpy.savetxt: fmt='%.6g')"),
    ("987;1.234;12.345;5\n1.001;2;3;4\n",  # German Excel, integers
     "number '1.234' may be 1234 or 1.234: every number in the table with a '.' has exactly three digits after it, "
     "as with thousands separators; export the table without thousands separators, or with more "
     "decimals (numpy.savetxt: fmt='%.6g')"),
    ('"12,345",987\n5,6\n',  # English Excel, comma-separated: the grouped cells quoted
     "number '12,345' may be 12345 or 12.345: every number in the table with a ',' has exactly three digits after "
     "it, as with thousands separators; export the table without thousands separators, or with more "
     "decimals (numpy.savetxt: fmt='%.6g')"),
    ("876,36;16.259,44\n12,90;5\n", "number '16.259,44' has thousands separators; export the table without them"),
    ("1.234.567\t2\n3\t4\n", "number '1.234.567' has thousands separators; export the table without them"),
    ("0.5\t12,345\n1\t2\n", "number '12,345' has a thousands separator (decimals are written with '.', as in '0.5'); "
                            "export the table without thousands separators"),
    ("0,5;1.234\n1;2\n", "number '1.234' has a thousands separator (decimals are written with ',', as in '0,5'); "
                         "export the table without thousands separators"),
])
def test_thousands_separators_are_refused_quoting_the_cell(tmp_path, text, problem):
    assert _refusal(tmp_path / "excel.csv", text) == (str(tmp_path / "excel.csv"), problem)


def _refusal(path, text: str) -> tuple[str, str]:
    """The (source, problem) of the InputError that reading ``text`` as an ion table raises."""
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_ion(path)
    return info.value.source, info.value.problem


@pytest.mark.parametrize("text, expected", [
    ("0,5;12,3456\n12,345;1\n", [[0.5, 12.3456], [12.345, 1]]),  # decimals of other lengths: "," is decimal
    ("0,5\t12,345\n3\t4\n", [[0.5, 12.345], [3, 4]]),
    ("1.500,2.250\n12.345,3\n", [[1.5, 2.25], [12.345, 3]]),  # a point in a comma-separated table is decimal
    ("123;124\n123,456;124,975\n", [[123, 124], [123.456, 124.975]]),  # a comma in a ";" table is decimal
    ("0.125\t1.5\n2\t0.000\n", [[0.125, 1.5], [2, 0]]),  # a leading 0 is no thousands group
])
def test_three_decimals_are_read_where_the_table_shows_the_decimal_separator(tmp_path, text, expected):
    path = tmp_path / "decimals.csv"
    path.write_text(text)
    np.testing.assert_allclose(read_ion(path).pixels, expected)


def test_a_non_numeric_cell_is_quoted_as_written_in_a_decimal_comma_table(tmp_path):
    path = tmp_path / "typo.csv"
    path.write_text("0,5;1,5\n2;x,y\n")
    with pytest.raises(InputError) as info:
        read_ion(path)
    assert info.value.problem == "non-numeric value 'x,y' in row 2"


@pytest.mark.parametrize("text", [
    "row,col,intensity\n1,1,5\n1,2,6\n2,2,7\n",  # row = y, col = x
    "X,Y,Value\n1,1,5\n2,1,6\n2,2,7\n",
    "y,x,v\n1,1,5\n1,2,6\n2,2,7\n",
    "x_um,y_um,v\n1,1,5\n2,1,6\n2,2,7\n",
    "x (µm),y (µm),v\n1,1,5\n2,1,6\n2,2,7\n",
    "Column [px];Row [px];I\n1;1;5\n2;1;6\n2;2;7\n",
    "col_index\trow_index\tmz_885\n1\t1\t5\n2\t1\t6\n2\t2\t7\n",
])
def test_long_table_coordinate_names(tmp_path, text):
    path = tmp_path / "long.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_ion(path).pixels, [[5, 6], [0, 7]])


@pytest.mark.parametrize("text, problem", [
    ("i,j,intensity\n1,1,5\n2,1,6\n2,2,7\n",
     "3-column table headed 'i', 'j', 'intensity' is not a long table msifusion knows: name its columns x, y (or col, "
     "row; a unit may follow: x_um, x (µm)) and the intensity; for a 3-pixel-wide image, drop the header"),
    ("x_ft,y_ft,v\n1,1,5\n2,1,6\n",  # not a unit we know
     "3-column table headed 'x_ft', 'y_ft', 'v' is not a long table msifusion knows: name its columns x, y (or col, "
     "row; a unit may follow: x_um, x (µm)) and the intensity; for a 3-pixel-wide image, drop the header"),
    ("x,x_um,y,v\n1,25,1,5\n2,50,1,6\n", "long table has 2 x columns (x, x_um); keep one x and one y column, of pixel "
                                        "indices"),
])
def test_unrecognised_or_ambiguous_long_tables_are_refused(tmp_path, text, problem):
    assert _refusal(tmp_path / "long.csv", text)[1] == problem


def test_long_table_positions_in_um_are_still_refused_under_any_coordinate_name(tmp_path):
    path = tmp_path / "um.csv"
    path.write_text("x_um,y_um,v\n0,0,5\n25,0,6\n50,25,7\n")
    with pytest.raises(InputError, match="advance in steps of 25, not 1: they look like positions in µm"):
        read_ion(path)
    path.write_text("row,col,v\n2001,1001,1\n2001,1002,2\n" + "".join(f"2100,{x},1\n" for x in range(1001, 1101)))
    with pytest.raises(InputError, match=r"x and y start at \(1001, 2001\), far from the origin"):
        read_ion(path)


@pytest.mark.parametrize("text", [
    "# m/z list\n100\n\n200.5\n",
    "# sample.imzML: 4×5 px\nm/z\tmean_intensity\n100.0000\t3.1\n200.5000\t1.2\n",  # what `msifusion peaks` prints
    "mz,name\n100,\"a, b\"\n200.5,c\n",
    "mz;intensity\n100;1,5\n200.5;2,25\n",  # decimal commas in the other columns do not matter
    "mz,count\n100,5\n200.5,7\n",  # the header says the comma separates columns
    "\ufeffm/z\r\n100\r\n200.5\r\n",  # a byte-order mark, Windows line ends
    "intensity\tm/z\n345\t100\n12\t200.5\n",  # the header names the m/z column: not the first
    "name,M/Z (Da)\n\"glucose, a\",100\nb,\"200.5\"\n",  # quoted cells, as Excel writes them
    "peaks\n100\n200.5\n",  # a header of one column names it
    "100\tglucose\n200.5\n",  # no header: a name missing from a row is no number missing
    ",intensity,mz\n0,10,100\n1,20,200.5\n",  # pandas' to_csv: an unnamed index column first
    "Mass error (ppm),m/z\n1.5,100\n-0.3,200.5\n",  # a mass error is no m/z
    "Name,Neutral mass,m/z\nglucose,180.063,100\nb,1,200.5\n",  # the ion's m/z, not the neutral mass
    "m/z,m/z min,m/z max,intensity\n100,99.9,100.1,5\n200.5,200.4,200.6,3\n",  # a centre beside its bounds
    "m / z   mean intensity\n100   3.1\n200.5   1.2\n",  # names with single spaces, columns with runs of them
    "Center,Height\n100,3\n200.5,1\n",  # a header naming no m/z: its first column, as before
    "100 # glucose 180\n200.5\n",  # a comment after a number is no second number
    "100.0,10\n200.5,\n",  # an intensity missing from a comma-separated row
    "Name,m/z,Note\r\nA,100,\r\nB,200.5,\r\n,,\r\n,,\r\n",  # Excel's empty rows at the end
    "Compound;m/z;Intensity\r\nA;100;1,37\r\nB;200,5;0,52\r\n",  # a French or German Excel: decimal commas
    "100;3,1\n200,5;2,0\n",  # the same without its header
])
def test_an_mz_list_takes_the_column_its_header_names(tmp_path, text):
    from msifusion.io.tables import read_mz_list

    path = tmp_path / "mz.txt"
    path.write_text(text)
    assert read_mz_list(path) == [100.0, 200.5]


@pytest.mark.parametrize("text, mzs", [
    ("328.9167 345 344\n", [328.9167, 345.0, 344.0]),
    ("328.9167,345.0,344.0\n", [328.9167, 345.0, 344.0]),
    ("328.9167\t345\t344\n", [328.9167, 345.0, 344.0]),
    ("328.9167; 345; 344;\n", [328.9167, 345.0, 344.0]),  # a trailing delimiter is no cell
    ("328.9167,lipid A\n", [328.9167]),  # a name beside it
    ("m/z\tmean_intensity\n328.9167\t2.5\n", [328.9167]),  # `peaks -n 1` saved: its header names the columns
    ("328.9167 2.5\n345 1.5\n", [328.9167, 345.0]),  # several rows: the first column
])
def test_a_lone_row_of_numbers_lists_them_all(tmp_path, text, mzs):
    from msifusion.io.tables import read_mz_list

    path = tmp_path / "mz.txt"
    path.write_text(text)
    assert read_mz_list(path) == mzs


@pytest.mark.parametrize("text, problem", [
    ("", "lists no m/z"),
    ("mz\n", "lists no m/z"),
    ("100\nabc\n", "line 2: 'abc' is not an m/z"),
    ("100\n-5\n", "line 2: '-5' is not an m/z"),
    ("100\nnan\n", "line 2: 'nan' is not an m/z"),
    ("328,9167\n", "line 1: '328,9167' is ambiguous; write m/z with a decimal point"),
    ("1,217.5\n", "line 1: '1,217.5' is ambiguous"),
    ("1217.5161a\n656.7762\n", "line 1: '1217.5161a' is not an m/z"),  # a number gone wrong is no header
    ("1217,5161\t3,1\n656,7762\t2,0\n", "line 1: '1217,5161' has a decimal comma"),  # tabs say nothing of commas
    ("1217.5161\t734.2\n", "holds one row of two numbers \\(1217.5161 and 734.2\\) and no header: an m/z and its "
                           "intensity, or two m/z\\? List one m/z per line"),
    # what a header says the list cannot carry: window bounds, a tolerance per ion
    ("mz_low\tmz_high\n500.0\t500.2\n", "its header names m/z window bounds \\(mz_low, mz_high\\) and no centre: "
                                         "list each window's centre as m/z and give its half-width with --tol"),
    ("m/z,tol\n500.1,5ppm\n", "its header names a tolerance column \\(tol\\), which is not read"),
    ("m/z,Interval Width (+/- Da)\n500.1,0.1\n", "its header names a tolerance column \\(Interval Width"),  # SCiLS
    ("Observed m/z,Theoretical m/z\n1217.5161,1217.512\n", "its header names 2 m/z columns \\(Observed m/z, "
                                                             "Theoretical m/z\\): keep the one to extract"),
    ("500.1 600.2\n700.3\n", "line 1 holds 2 numbers and line 2 1, and no header names the m/z column"),
    ("m/z,intensity\n\"328.9167\",300\n\"1,217.5\",100\n", "line 3: '1,217.5' has a decimal comma or a thousands "
                                                          "separator"),  # Excel quotes a number it shows as 1,217.5
    ("m/z\tname\n100\tglucose\n\tsucrose\n", "line 3 has no value in the m/z column"),
])
def test_a_malformed_mz_list_is_refused_naming_the_line(tmp_path, text, problem):
    from msifusion.io.tables import read_mz_list

    path = tmp_path / "mz.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=f"^{path}: {problem}"):
        read_mz_list(path)


@pytest.mark.parametrize("encoding", ["utf-16", "cp1252", "utf-8"])
def test_an_mz_list_saved_by_a_windows_console_is_read(tmp_path, encoding):
    from msifusion.io.tables import read_mz_list

    path = tmp_path / "peaks.tsv"  # what `peaks` prints, saved by PowerShell (UTF-16), cmd (a code page) or a shell
    path.write_bytes("# section.imzML: 163×274 px, pixel size 25 µm, m/z 400–1600\nm/z\tmean_intensity\n"
                     "1217.5161\t3.1\n656.7762\t2.0\n".encode(encoding))
    assert read_mz_list(path) == [1217.5161, 656.7762]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp1252"])
def test_an_ion_table_saved_by_windows_software_is_read(tmp_path, encoding):
    path = tmp_path / "ion.csv"  # Excel's "Unicode text" is UTF-16 (with or without its mark); CSV a code page
    text = "# m/z 1217.5, pixel 25 µm\nx (µm),y (µm),intensity\n0,0,1\n1,0,2\n0,1,3\n1,1,4\n"
    path.write_bytes(text.encode(encoding))
    np.testing.assert_array_equal(read_ion(path).pixels, [[1, 2], [3, 4]])


@pytest.mark.parametrize("reader, what", [("ion", "text table"), ("mz", "the m/z list"), ("landmarks", "landmarks")])
def test_a_binary_file_given_as_text_is_refused_as_such(tmp_path, reader, what):
    from msifusion.io.landmarks import read_landmarks
    from msifusion.io.tables import read_mz_list

    path = tmp_path / "table.csv"  # e.g. an Excel workbook renamed, or a TIFF given by mistake
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256)))
    read = {"ion": read_ion, "mz": read_mz_list, "landmarks": read_landmarks}[reader]
    with pytest.raises(InputError, match=f"^{path}: cannot read {what}: it is a binary file, not text$"):
        read(path)
