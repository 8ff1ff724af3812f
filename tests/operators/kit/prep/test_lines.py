"""Tests of operators.kit.prep.lines: every line of a CSV file is a row, read or quarantined."""
from __future__ import annotations

import boto3
import pandas as pd
import pytest

from operators.kit.prep import PrepError, prepare
from tests.operators.kit.prep.samples import CSV_HEADER, SCHEMA, batches, good_lines, quarantine_of, read_back


def test_csv_is_read_as_rfc_4180_and_malformed_lines_are_quarantined_with_file_and_line(tmp_path):
    lines = good_lines(3000)
    lines[1] = "S1,P9001,2026-01-02,1.5\n"  # too few fields, early (line 3)
    lines[2499] = "S1,P9002,2026-01-02,1.5,3,yes,extra\n"  # too many fields, late (line 2501)
    lines.append('"S1","P9003","2026-01-03","2.5","4","with, a comma"\n')  # the first quotes come late
    lines.append('S1,P9004,2026-01-03,2.5,4,"say ""hi"""\n')
    lines.append("S1,P9005,2026-01-03,2.5,4,caf\xe9\n")  # not UTF-8 (written as Latin-1 below)
    lines.append('S1,P9006,2026-01-03,2.5,4,"closed"and more\n')
    lines.append('S1,P9007,2026-01-03,2.5,4,"never closed\n')
    (tmp_path / "in.csv").write_bytes((CSV_HEADER + "".join(lines)).encode("latin-1"))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)

    assert result.quarantined_by_reason == {"malformed:invalid_encoding": 1, "malformed:missing_columns": 1,
                                            "malformed:too_many_columns": 1, "malformed:unclosed_quote": 1,
                                            "malformed:unquoted_value": 1}
    assert result.rows_in == len(lines) == result.rows_ok + result.rows_quarantined
    quarantine = quarantine_of(result).set_index("_prep_reason")
    assert quarantine.loc["malformed:missing_columns", "_prep_line"] == 3
    assert quarantine.loc["malformed:too_many_columns", "_prep_line"] == 2501
    assert quarantine.loc["malformed:invalid_encoding", "_prep_line"] == 3004
    assert quarantine.loc["malformed:unquoted_value", "_prep_line"] == 3005
    assert quarantine.loc["malformed:unclosed_quote", "_prep_line"] == 3006
    assert set(quarantine["_prep_file"]) == {str(tmp_path / "in.csv")}
    assert "P9002" in quarantine.loc["malformed:too_many_columns", "_prep_raw"]
    good = batches(result).set_index("product")
    assert good.loc["P9003", "segment"] == "S1" and good.loc["P9003", "promo"] == "with, a comma"
    assert good.loc["P9004", "promo"] == 'say "hi"'
    assert result.units == len(good.index.unique())


def test_a_quote_that_never_closes_is_one_quarantined_line_and_the_lines_after_it_are_read(tmp_path):
    lines = good_lines(3000)
    lines[999] = 'S1,P0999,2026-01-05,1.5,3,"never closed\n'  # line 1001: every later line would be read into it
    lines[1999] = 'S2,P1999,"2026-01-05,1.5,3,yes\n'  # line 2001: closed by a quote far below, then junk
    lines[2500] = '"S1","P2500","2026-01-01","2.5","4","quoted"\n'
    lines[2999] = 'S2,P2999,2026-01-05,1.5,3,"the last line, never closed\n'  # swallows nothing
    for name, newline in (("lf.csv", "\n"), ("crlf.csv", "\r\n")):
        (tmp_path / name).write_bytes((CSV_HEADER + "".join(lines)).replace("\n", newline).encode())
        result = prepare(str(tmp_path / name), SCHEMA, str(tmp_path / f"out-{name}"), 8, max_quarantined_share=0.5)

        assert result.rows_in == len(lines) == result.rows_ok + result.rows_quarantined, name
        assert result.quarantined_by_reason == {"malformed:unclosed_quote": 3}, name
        good, quarantine = read_back(result)
        assert sorted(quarantine["_prep_line"]) == [1001, 2001, 3001], name
        assert set(quarantine["_prep_file"]) == {str(tmp_path / name)}
        assert quarantine.set_index("_prep_line").loc[1001, "_prep_raw"] == lines[999].rstrip("\n")
        assert len(good) == len(lines) - 3 and {"P1000", "P2000", "P2500", "P2998"} <= set(good["product"]), name
        assert result.units == len(lines) - 3


def test_a_line_over_the_line_length_limit_is_quarantined_and_the_next_lines_are_read(tmp_path):
    lines = good_lines(50)
    lines[10] = "S1,P0010,2026-01-02,1.5,3," + "x" * 3_000_000 + "\n"  # DuckDB rejects it (reason was None)
    lines[20] = 'S1,P0020,2026-01-02,1.5,3,"' + "y" * 3_000_000 + '"\n'
    lines[30] = "S1,P0030,2026-01-02,1.5,3," + "z" * 40_000_000 + "\n"  # longer than DuckDB's buffer: it vanished
    (tmp_path / "long.csv").write_text(CSV_HEADER + "".join(lines))
    result = prepare(str(tmp_path / "long.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=0.5)

    assert result.quarantined_by_reason == {"malformed:line_size_over_maximum": 3}
    assert result.rows_in == len(lines) == result.rows_ok + result.rows_quarantined
    good, quarantine = read_back(result)
    assert sorted(quarantine["_prep_line"]) == [12, 22, 32]
    assert quarantine["_prep_raw"].str.len().max() <= 10_000
    assert set(quarantine["_prep_raw"].str[:9]) == {"S1,P0010,", "S1,P0020,", "S1,P0030,"}
    assert {"P0011", "P0031", "P0049"} <= set(good["product"])


def test_quoted_line_breaks_make_one_row_and_quarantined_lines_keep_their_own_line_numbers(tmp_path):
    lines = good_lines(20)
    lines[2] = 'S2,P0002,2026-01-03,3.5,2,"two\nlines"\n'  # lines 4-5: one row
    lines[5] = 'S2,P0005,2026-01-01,6.5,5,"three\r\n\nlines"\n'  # lines 8-10 with an empty line inside: one row
    lines[8] = "\n"  # an empty line (13) is not a row
    lines[11] = "S2,P0011,2026-01-02\n"  # line 16: too few fields
    lines[14] = 'S2,P0014,2026-01-05,1.5,3,yes,"an extra\nfield"\n'  # lines 19-20: too many fields, one row
    lines[17] = "S2,P0017\n"  # line 23
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=0.5)

    assert result.rows_in == 19 == result.rows_ok + result.rows_quarantined
    assert result.quarantined_by_reason == {"malformed:missing_columns": 2, "malformed:too_many_columns": 1}
    good, quarantine = read_back(result)
    assert sorted(quarantine["_prep_line"]) == [16, 19, 23]
    assert quarantine.set_index("_prep_line").loc[19, "_prep_raw"] == lines[14].rstrip("\n")
    assert good.set_index("product").loc["P0005", "promo"] == "three\r\n\nlines"


def test_malformed_lines_count_in_the_window_of_their_date_when_it_can_be_read(tmp_path):
    lines = good_lines(40)  # dates 2026-01-01 .. 2026-01-05
    lines[0] = "S0,P0000,2026-01-01,1.5\n"  # malformed, its date before the window
    lines[1] = "S1,P0001,2026-01-04,2.5,1,yes,extra\n"  # malformed, its date in the window
    lines[2] = "S2,P0002\n"  # malformed, no date: counted in every window
    lines[3] = 'S0,P0003,2026-01-02,4.5,3,"never closed\n'  # an unclosed quote before the window
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-01-03", "2026-01-05"),
                     max_quarantined_share=0.5)

    in_window = sum(line.split(",")[2] in ("2026-01-03", "2026-01-04") for line in good_lines(40)[4:])
    assert result.rows_ok == in_window
    assert result.quarantined_by_reason == {"malformed:missing_columns": 1, "malformed:too_many_columns": 1}
    assert result.rows_in == in_window + 2 == result.rows_ok + result.rows_quarantined
    assert sorted(quarantine_of(result)["_prep_line"]) == [3, 4]
    everything = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "all"), 8, max_quarantined_share=0.5)
    assert everything.rows_in == 40 and everything.rows_quarantined == 4


def test_a_file_with_too_many_unclosed_quotes_is_refused_naming_its_lines(tmp_path):
    from operators.kit.prep import MAX_UNCLOSED_QUOTES

    lines = good_lines(200)
    for i in range(0, 200, 8):
        lines[i] = lines[i].replace(",yes", ',"yes')
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    with pytest.raises(PrepError) as error:
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=1)
    message = str(error.value)
    assert f"in.csv: more than {MAX_UNCLOSED_QUOTES} lines open a quoted field that never closes" in message
    assert "lines 2, 10, 18," in message and "(\"\")" in message
    assert not (tmp_path / "out").exists()


def test_lines_the_reader_does_not_account_for_refuse_the_file(tmp_path):
    # A quoted field over DuckDB's buffer: its reader loses its place in the file and skips lines silently.
    lines = good_lines(20)
    lines[5] = 'S1,P0005,2026-01-02,1.5,3,"' + ("x" * 1000 + "\n") * 40_000 + '"\n'
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    with pytest.raises(PrepError, match=r"in.csv: the CSV reader accounted for \d+ of the file's \d+ lines"):
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=1)


def test_an_unclosed_quote_in_a_gzipped_csv_on_s3_is_one_quarantined_line(moto_endpoint, tmp_path):
    import gzip

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="prep-quote")
    lines = good_lines(400)
    lines[100] = lines[100].replace(",yes", ',"yes')
    s3.put_object(Bucket="prep-quote", Key="raw/in.csv", Body=gzip.compress((CSV_HEADER + "".join(lines)).encode()))
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    result = prepare("s3://prep-quote/raw/in.csv", SCHEMA, "s3://prep-quote/prepped", 8, storage_options=options)
    assert (result.rows_in, result.rows_ok) == (400, 399)
    assert result.quarantined_by_reason == {"malformed:unclosed_quote": 1}
    s3.download_file("prep-quote", "prepped/quarantine.parquet", str(tmp_path / "q.parquet"))
    quarantine = pd.read_parquet(tmp_path / "q.parquet")
    assert list(quarantine["_prep_line"]) == [102] and list(quarantine["_prep_file"]) == ["s3://prep-quote/raw/in.csv"]
