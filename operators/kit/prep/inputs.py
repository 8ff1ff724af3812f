"""Which files an input is, and whether they may be read: the allow-list, discovery, CSV headers and compression.

`prepare` reads exactly the files listed, each once, whatever characters their names hold (DuckDB
treats every path as a glob, so prep escapes them: `_path_list`). CSV is RFC 4180 with a header line:
the delimiter is taken from the header (`,`, `;`, tab or `|`), the quote and escape are `"`, nothing
is guessed from a sample, every value is read as text and parsed per the schema. A CSV file is read
as gzip when its bytes are gzip, whatever its name, and as text otherwise. A `key=value` folder above
the files gives a column `key` when the files lack one (`_partition_keys`; `reading.py` adds it, and
checks it against the files' own column where they carry one).

A user-given `input_uri` (`prepare_configured`) may point only at data under DATA_ROOT and the
prefixes in AIRBATCH_INPUT_PREFIXES (`input_prefixes`, `check_input_uri`), and so must every file a
folder, glob or link leads to (`_resolve_input`).
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence

import fsspec
from batch_worker.storage import Location

from operators.kit.prep.errors import PrepError
from operators.kit.prep.outputs import FILE_COLUMN
from operators.kit.prep.sql import _literal
from operators.kit.storage import data_root

#: Comma-separated local folders and s3://bucket/prefix that `input_uri` may name, besides DATA_ROOT.
INPUT_PREFIXES_SETTING = "AIRBATCH_INPUT_PREFIXES"

_INPUT_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
_CSV_DELIMITERS = (",", ";", "\t", "|")
_MAX_HEADER_BYTES = 1 << 20
_GLOB_CHARACTERS = re.compile(r"([\[\]*?{}])")


def input_prefixes(env: Mapping[str, str] | None = None) -> list[str]:
    """DATA_ROOT and the prefixes of AIRBATCH_INPUT_PREFIXES: where a user-given input_uri may point."""
    env = os.environ if env is None else env
    root = env.get("DATA_ROOT")
    if not root:
        root = data_root()
    extra = [prefix.strip() for prefix in env.get(INPUT_PREFIXES_SETTING, "").split(",")]
    return [root, *(prefix for prefix in extra if prefix)]


def _normalised_prefix(prefix: str) -> str:
    if prefix.startswith("s3://"):
        return prefix.rstrip("/")
    if "://" in prefix:
        raise ValueError(f"{INPUT_PREFIXES_SETTING}/DATA_ROOT entry {prefix!r}: use a local path or s3://bucket/prefix")
    return os.path.realpath(prefix)


def _is_under(path: str, prefix: str) -> bool:
    separator = "/" if prefix.startswith("s3://") else os.sep
    return path == prefix or path.startswith(prefix.rstrip(separator) + separator)


def _outside_message(what: str, prefixes: Sequence[str]) -> str:
    return (f"{what} is outside the allowed input locations ({', '.join(prefixes)}): put the data under "
            f"DATA_ROOT, or add its folder or s3://bucket/prefix to {INPUT_PREFIXES_SETTING} (comma-separated)")


def check_input_uri(input_uri: str, prefixes: Sequence[str]) -> None:
    """Refuse an input_uri that is not a local path or s3:// URI under one of `prefixes`.

    Local paths are compared after resolving `..` and symbolic links; an s3:// URI may not hold `.`
    or `..` segments. Files found under an allowed folder are checked again as they are listed.
    """
    scheme, sep, rest = input_uri.partition("://")
    if sep and scheme != "s3":
        raise PrepError(f"input_uri {input_uri!r}: scheme {scheme}:// is not accepted; give a local path or an "
                        f"s3:// URI under DATA_ROOT or {INPUT_PREFIXES_SETTING}")
    allowed = [_normalised_prefix(prefix) for prefix in prefixes]
    if sep:
        if any(part in (".", "..") for part in rest.split("/")):
            raise PrepError(f"input_uri {input_uri!r} holds a '.' or '..' segment; give the plain s3:// URI")
        target = "s3://" + rest.rstrip("/")
    else:
        target = os.path.realpath(_literal_part(input_uri))
    if not any(_is_under(target, prefix) for prefix in allowed if prefix.startswith("s3://") == bool(sep)):
        raise PrepError(_outside_message(f"input_uri {input_uri!r}" + (f" (resolved: {target})" if not sep else ""),
                                         prefixes))


def _literal_part(path: str) -> str:
    """The path itself if it exists, else the folders before its first glob character."""
    if os.path.lexists(path) or not re.search(r"[*?\[{]", path):
        return path
    head = re.split(r"[*?\[{]", path, maxsplit=1)[0]
    return os.path.dirname(head) or "."


def _input_format(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    if name.startswith((".", "_")):  # hidden and marker files (.crc, _SUCCESS, _metadata)
        return None
    return next((fmt for suffix, fmt in _INPUT_SUFFIXES.items() if name.endswith(suffix)), None)


def _local_files(root: str, allowed: Sequence[str] | None) -> list[str]:
    """Files under a local folder; a link is followed only where it resolves inside an allowed prefix."""
    found, seen, folders = [], set(), [root]
    while folders:
        folder = folders.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        _require_allowed(folder, real, allowed)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    folders.append(entry.path)
                elif entry.is_file() and _input_format(entry.path):
                    found.append(entry.path)
    return found


def _require_allowed(path: str, real: str, allowed: Sequence[str] | None) -> None:
    if allowed is not None and not any(_is_under(real, prefix) for prefix in map(_normalised_prefix, allowed)
                                       if not prefix.startswith("s3://")):
        raise PrepError(_outside_message(f"{path} (resolved: {real})", allowed))


def _resolve_input(source: Location, allowed: Sequence[str] | None = None) -> tuple[list[str], str]:
    """The input files (sorted) and their one format. An existing path is taken as itself, whatever
    characters its name holds; only a path that does not exist is a glob."""
    fs = source.fs
    if source.remote:
        fs.invalidate_cache()  # s3fs keeps listings per process: a file added since must be seen
    if fs.isdir(source.uri):
        paths = (_local_files(source.uri, allowed) if not source.remote
                 else [source.full(p) for p in fs.find(source.uri)])
    elif fs.isfile(source.uri):
        paths = [source.uri]
    elif re.search(r"[*?\[]", source.uri):
        paths = [source.full(p) for p in fs.glob(source.uri) if fs.isfile(p)]
    else:
        raise FileNotFoundError(f"input {source.uri!r} does not exist")
    files = sorted({p for p in paths if _input_format(p)})
    for path in files:
        if source.remote:
            if allowed is not None and not any(_is_under(path, _normalised_prefix(prefix)) for prefix in allowed):
                raise PrepError(_outside_message(path, allowed))
        else:
            _require_allowed(path, os.path.realpath(path), allowed)
    if not files:
        raise FileNotFoundError(f"input {source.uri!r} holds no {', '.join(_INPUT_SUFFIXES)} files")
    formats = {_input_format(f) for f in files}
    if len(formats) > 1:
        raise ValueError(f"input {source.uri!r} mixes formats {sorted(formats)}; prep reads one format at a time")
    return files, formats.pop()


def _as_glob_literal(path: str) -> str:
    """A path DuckDB's globbing (local, or fsspec's for s3://) matches only to itself."""
    return _GLOB_CHARACTERS.sub(r"[\1]", path)


def _path_list(files: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(_as_glob_literal(f)) for f in files) + "]"


#: Bytes that open a file which is not CSV text: (magic, what the file holds, what to do).
_NOT_CSV = (
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed data", "decompress it (zstd -d), or compress it with gzip"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed data", "decompress it (bunzip2), or compress it with gzip"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed data", "decompress it (xz -d), or compress it with gzip"),
    (re.compile(rb"PK\x03\x04"), "a zip archive", "unzip it and give the CSV file(s) inside"),
    (re.compile(rb"PAR1[\x00-\x08\x0e-\x1f]"), "Parquet", "name it .parquet"),
)


def _csv_compression(path: str, head: bytes) -> str:
    """'gzip' or 'none', from a CSV file's first bytes whatever its name says (a .csv of gzip bytes is read
    as gzip, a .csv.gz of plain text as text); PrepError for another compression or format."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    for magic, what, advice in _NOT_CSV:
        if magic.match(head):
            raise PrepError(f"{path}: the file holds {what}, not CSV text; {advice} (prep reads CSV as plain text "
                            "or gzip, whatever the file is named)")
    return "none"


def _open_csv(fs: fsspec.AbstractFileSystem, path: str, compression: str):
    """The file's CSV bytes (decompressed): what DuckDB reads with `compression`."""
    return fs.open(path, "rb", compression=None if compression == "none" else compression)


def _csv_header(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, tuple[str, ...], str]:
    """(delimiter, column names, compression) from a CSV file's first bytes and first line, read as RFC 4180."""
    with fs.open(path, "rb") as handle:
        head = handle.read(_MAX_HEADER_BYTES)
    compression = _csv_compression(path, head[:16])
    if compression != "none":
        try:
            with _open_csv(fs, path, compression) as handle:
                head = handle.read(_MAX_HEADER_BYTES)
        except (OSError, EOFError) as exc:
            raise PrepError(f"{path}: the file starts like {compression} data but cannot be decompressed "
                            f"({exc}); give the complete file, or the CSV text itself") from None
    line = head.split(b"\n", 1)[0]
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise PrepError(f"{path}: the header line is not UTF-8 (byte {exc.object[exc.start]:#04x} at byte "
                        f"{exc.start}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    if not text.strip():
        raise PrepError(f"{path}: line 1 is empty; the first line of a CSV file must name its columns")
    outside_quotes = re.sub(r'"[^"]*"', "", text)
    delimiter = max(_CSV_DELIMITERS, key=outside_quotes.count)
    delimiter = delimiter if outside_quotes.count(delimiter) else ","
    try:
        names = tuple(next(csv.reader([text], delimiter=delimiter, quotechar='"', doublequote=True, strict=True)))
    except csv.Error as exc:
        raise PrepError(f"{path}: line 1 (the header) is not valid CSV ({exc}); quote names with \"\"") from None
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise PrepError(f"{path}: line 1 (the header) has no name for column(s) {blank}; name every column")
    lowered = [name.lower() for name in names]
    repeated = sorted({name for name in names if lowered.count(name.lower()) > 1})
    if repeated:
        raise PrepError(f"{path}: line 1 (the header) repeats column(s) {repeated} (names are compared without "
                        "case); give each column its own name")
    return delimiter, names, compression


def _partition_keys(files: Sequence[str]) -> list[str]:
    """The `key=value` folder names every file sits under, in path order."""
    per_file = [[part.split("=", 1)[0] for part in re.split(r"[/\\]", path)[:-1] if "=" in part.strip("=")]
                for path in files]
    return [key for key in dict.fromkeys(per_file[0]) if all(key in keys for keys in per_file[1:])]


def _folder_value(key: str) -> str:
    """SQL: the value of `key=` in the row's file path, NULL where the folder has none."""
    pattern = r"(^|[/\\])" + re.escape(key) + r"=([^/\\]*)[/\\]"
    return f"nullif(regexp_extract({FILE_COLUMN}, {_literal(pattern)}, 2), '')"
