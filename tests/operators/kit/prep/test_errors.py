"""Tests of operators.kit.prep.errors: errors that name the file, the encoding and near-matching columns."""
from __future__ import annotations

import pytest

from operators.kit.prep import SchemaError, prepare
from tests.operators.kit.prep.samples import CSV_HEADER, SCHEMA, good_lines


def test_errors_name_the_file_the_encoding_and_near_matching_columns(tmp_path):
    (tmp_path / "latin.csv").write_bytes(("segment,product,date,price,quantity,promo\xe9\n"
                                          + "".join(good_lines(5))).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv: the header line is not UTF-8 \(byte 0xe9.*iconv"):
        prepare(str(tmp_path / "latin.csv"), SCHEMA, str(tmp_path / "out"), 8)
    (tmp_path / "latin_rows.csv").write_bytes((CSV_HEADER + "".join(good_lines(5))
                                               + "S0,P9,2026-01-01,1.5,2,caf\xe9\n").encode("latin-1"))
    from operators.kit.prep import PrepError

    with pytest.raises(PrepError, match=r"malformed:invalid_encoding: 1 \(first: .*latin_rows.csv line 7\); "
                                        r"the file is not UTF-8"):
        prepare(str(tmp_path / "latin_rows.csv"), SCHEMA, str(tmp_path / "out"), 8)

    (tmp_path / "upper.csv").write_text("SEGMENT,product,Date,price ,qty,promo\n" + "".join(good_lines(5)))
    with pytest.raises(SchemaError) as error:
        prepare(str(tmp_path / "upper.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert error.value.missing == ("segment", "date", "price", "quantity")
    message = str(error.value)
    for text in ("'segment' (the input has 'SEGMENT')", "'date' (the input has 'Date')",
                 "'price' (the input has 'price ')", "upper.csv", "rename the input's columns"):
        assert text in message
