"""MovieLens from the user's own GroupLens download folder (ml-100k, ml-1m/10m, ml-20m/25m/latest).

The layout is detected from the files present, in this order:

* ``ratings.csv`` + ``movies.csv`` (ml-20m, ml-25m, ml-latest[-small]): CSV with header,
  genres '|'-separated, release year parsed from the title's "(1995)";
* ``ratings.dat`` + ``movies.dat`` (ml-1m, ml-10m): '::'-separated, latin-1 for ml-1m
  (utf-8 is tried first), genres '|'-separated, year from the title;
* ``u.data`` + ``u.item`` (ml-100k): tab-separated ratings; ``u.item`` '|'-separated latin-1
  with 19 genre flags named by ``u.genre`` if present, else the standard list; release
  year from the release date ("01-Jan-1995"), else from the title.

If the folder itself has none of these but exactly one sub-folder does (the folder the
GroupLens zip was extracted into), that sub-folder is used. Output is the same for every
layout: events (user_id, item_id, timestamp, rating), items (item_id, genres,
release_ts = 1 January of the release year, UTC; title as a hidden column). Placeholder
genres ("unknown", "(no genres listed)") become an empty list.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.recipes.files import csv_problem

log = logging.getLogger(__name__)

# Genre labels that mean "no genre known" rather than a genre.
MISSING_GENRE_LABELS = ("unknown", "(no genres listed)")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# layout name -> (ratings file, movies file)
LAYOUTS = {
    "ml-20m/ml-latest (csv)": ("ratings.csv", "movies.csv"),
    "ml-1m/ml-10m (dat)": ("ratings.dat", "movies.dat"),
    "ml-100k (u.data)": ("u.data", "u.item"),
}
LABELLED_INTENTS = ("genre", "release_bucket", "engagement")


def load_movielens(path: str) -> RawTables:
    """Load a GroupLens MovieLens folder; raises DataError naming the folder if no layout fits."""
    folder, layout = _detect_layout(Path(path))
    ratings_name, movies_name = LAYOUTS[layout]
    ratings_file, movies_file = folder / ratings_name, folder / movies_name
    if not movies_file.exists():
        raise DataError(f"{folder}: has {ratings_name} but not {movies_name} ({layout} layout)")
    if layout.startswith("ml-20m"):
        events, items = _read_csv_layout(ratings_file, movies_file)
    elif layout.startswith("ml-1m"):
        events, items = _read_dat_layout(ratings_file, movies_file)
    else:
        events, items = _read_100k_layout(ratings_file, movies_file, folder / "u.genre")
    log.info("%s: %s layout, %d ratings, %d movies", folder, layout, events.height, items.height)
    return RawTables(
        name="movielens",
        events=events,
        items=items,
        intents=list(LABELLED_INTENTS),
        weight_column="rating",
        source=f"{folder} ({layout}: {ratings_name}, {movies_name})",
        hidden_columns=["title"],
    )


# ---------------------------------------------------------------------------------------
# Shared parsing helpers (also used by the ml-100k recipe)
# ---------------------------------------------------------------------------------------
def split_genres(column: pl.Expr, separator: str) -> pl.Expr:
    """Delimited genre text -> List[Utf8], without empty strings and placeholder labels."""
    genre = pl.element().str.strip_chars()
    return (
        column.fill_null("")
        .str.split(separator)
        .list.eval(genre.filter((genre != "") & ~genre.is_in(MISSING_GENRE_LABELS)))
    )


def release_from_year(year_text: pl.Expr, title: pl.Expr | None = None) -> pl.Expr:
    """Jan 1 (UTC) epoch seconds of a four-digit year; else the title's "(YYYY)"; else null."""
    year = year_text.cast(pl.Utf8).str.extract(r"(\d{4})\s*$").cast(pl.Int32)
    if title is not None:
        year = year.fill_null(title.str.extract(r"\((\d{4})\)\s*$").cast(pl.Int32))
    return pl.date(year, 1, 1).cast(pl.Datetime("ms")).dt.epoch("s")


def decode_text(path: Path) -> str:
    """File text as utf-8, or latin-1 where it is not valid utf-8 (ml-1m, ml-100k)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# ---------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------
def _detect_layout(folder: Path) -> tuple[Path, str]:
    if folder.is_file():
        raise DataError(
            f"{folder}: is a file; config key 'data.path' must be the MovieLens folder "
            "(the extracted GroupLens zip)"
        )
    if not folder.is_dir():
        raise DataError(f"{folder}: MovieLens folder not found (config key 'data.path')")
    for candidate in (folder, *_single_subfolder(folder)):
        for layout, (ratings, _) in LAYOUTS.items():
            if (candidate / ratings).is_file():
                return candidate, layout
    expected = "; ".join(f"{' + '.join(files)} ({name})" for name, files in LAYOUTS.items())
    raise DataError(f"{folder}: no known MovieLens layout found (expected {expected})")


def _single_subfolder(folder: Path) -> list[Path]:
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return subfolders if len(subfolders) == 1 else []


def _read_table(path: Path, text: str | None = None, **kwargs: object) -> pl.DataFrame:
    """``pl.read_csv`` of ``path`` (or of its already decoded ``text``), errors naming it."""
    source = io.BytesIO(text.encode("utf-8")) if text is not None else path
    try:
        frame = pl.read_csv(source, **kwargs)
    except (pl.exceptions.PolarsError, OSError) as err:
        comma_csv = text is None and kwargs.get("separator", ",") == ","
        problem = csv_problem(path) if comma_csv and kwargs.get("has_header", True) else None
        raise DataError(
            f"{path}: {problem}"
            if problem
            else f"{path}: cannot be parsed: {str(err).splitlines()[0]}"
        ) from None
    if frame.height == 0:
        raise DataError(f"{path}: has no rows")
    return frame


def _read_csv_layout(ratings_file: Path, movies_file: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    ratings = _read_table(ratings_file, schema_overrides={"rating": pl.Float64})
    movies = _read_table(movies_file, infer_schema=False)
    _require(ratings, ratings_file, ("userId", "movieId", "rating", "timestamp"))
    _require(movies, movies_file, ("movieId", "title", "genres"))
    for frame, path in ((ratings, ratings_file), (movies, movies_file)):
        if frame[frame.columns[-1]].null_count():  # a short line leaves the last field null
            problem = csv_problem(path)
            if problem:
                raise DataError(f"{path}: {problem}")
    events = ratings.select(
        pl.col("userId").alias("user_id"),
        pl.col("movieId").alias("item_id"),
        pl.col("timestamp"),
        pl.col("rating").cast(pl.Float64),
    )
    items = movies.select(
        pl.col("movieId").cast(pl.Int64).alias("item_id"),
        split_genres(pl.col("genres"), "|").alias("genres"),
        release_from_year(pl.lit(None, pl.Utf8), pl.col("title").str.strip_chars()).alias(
            "release_ts"
        ),
        pl.col("title"),
    )
    return events, items


def _read_dat_layout(ratings_file: Path, movies_file: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    # '::' is not a single byte, so split on ':' and keep every other field
    # (``1::1193::5::978300760`` -> 7 fields, the empty ones in between).
    ratings = _read_table(ratings_file, separator=":", has_header=False, infer_schema=False)
    if ratings.width != 7:
        raise DataError(
            f"{ratings_file}: expected 'UserID::MovieID::Rating::Timestamp' rows, "
            f"found {(ratings.width + 1) // 2} '::'-separated fields"
        )
    user, item, rating, timestamp = (ratings.columns[i] for i in (0, 2, 4, 6))
    _check_complete(ratings, [user, item, rating, timestamp], ratings_file, "::")
    events = ratings.select(
        pl.col(user).alias("user_id"),
        pl.col(item).alias("item_id"),
        pl.col(timestamp).alias("timestamp"),
        pl.col(rating).alias("rating"),
    )
    events = _cast_numbers(events, ratings_file)

    lines = pl.Series("line", decode_text(movies_file).splitlines())
    lines = lines.filter(lines.str.strip_chars() != "")
    if lines.len() == 0:
        raise DataError(f"{movies_file}: has no rows")
    # Greedy title: a title containing '::' still leaves the genres as the last field.
    fields = lines.str.extract_groups(r"^(\d+)::(.*)::([^:]*)$").struct.unnest()
    bad = fields.select(pl.col("1").is_null().sum()).item()
    if bad:
        example = lines.filter(fields["1"].is_null())[0]
        raise DataError(
            f"{movies_file}: {bad} lines are not 'MovieID::Title::Genres' (e.g. {example!r})"
        )
    items = fields.select(
        pl.col("1").cast(pl.Int64).alias("item_id"),
        split_genres(pl.col("3"), "|").alias("genres"),
        release_from_year(pl.lit(None, pl.Utf8), pl.col("2").str.strip_chars()).alias("release_ts"),
        pl.col("2").alias("title"),
    )
    return events, items


def _read_100k_layout(
    ratings_file: Path, movies_file: Path, genre_file: Path
) -> tuple[pl.DataFrame, pl.DataFrame]:
    ratings = _read_table(ratings_file, separator="\t", has_header=False, infer_schema=False)
    if ratings.width != 4:
        raise DataError(
            f"{ratings_file}: expected 4 tab-separated fields (user, item, rating, "
            f"timestamp), found {ratings.width}"
        )
    _check_complete(ratings, ratings.columns, ratings_file, "tab")
    events = ratings.rename(
        dict(zip(ratings.columns, ("user_id", "item_id", "rating", "timestamp")))
    ).select("user_id", "item_id", "timestamp", "rating")
    events = _cast_numbers(events, ratings_file)

    genres = _ml100k_genre_names(genre_file)
    movies = _read_table(
        movies_file,
        decode_text(movies_file),
        separator="|",
        has_header=False,
        infer_schema=False,
        quote_char=None,
    )
    expected = 5 + len(genres)
    if movies.width != expected:
        raise DataError(
            f"{movies_file}: expected {expected} '|'-separated fields (5 + {len(genres)} "
            f"genre flags), found {movies.width}"
        )
    flags = movies.columns[5:]
    items = movies.select(
        pl.col(movies.columns[0]).cast(pl.Int64).alias("item_id"),
        pl.concat_list(
            pl.when(pl.col(flag) == "1").then(pl.lit(name)) for flag, name in zip(flags, genres)
        )
        .list.drop_nulls()
        .list.eval(pl.element().filter(~pl.element().is_in(MISSING_GENRE_LABELS)))
        .alias("genres"),
        release_from_year(pl.col(movies.columns[2]), pl.col(movies.columns[1])).alias("release_ts"),
        pl.col(movies.columns[1]).alias("title"),
    )
    return events, items


def _ml100k_genre_names(genre_file: Path) -> tuple[str, ...]:
    """Genre names in flag order from ``u.genre`` ("Action|1"), or the standard list."""
    if not genre_file.is_file():
        return ML100K_GENRES
    rows = [line.rsplit("|", 1) for line in decode_text(genre_file).splitlines() if line.strip()]
    if any(len(row) != 2 or not row[1].strip().isdigit() for row in rows):
        raise DataError(f"{genre_file}: expected 'name|index' lines")
    by_index = {int(index): name for name, index in rows}
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{genre_file}: genre indices are not 0..{len(by_index) - 1}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _cast_numbers(events: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Text fields -> Int64 ids/timestamps and Float64 ratings, naming the bad field."""
    targets = {
        "user_id": pl.Int64,
        "item_id": pl.Int64,
        "timestamp": pl.Int64,
        "rating": pl.Float64,
    }
    cast = events.select(
        pl.col(name).str.strip_chars().cast(dtype, strict=False) for name, dtype in targets.items()
    )
    for name in targets:
        bad = events[name].is_not_null() & cast[name].is_null()
        if bad.any():
            raise DataError(
                f"{path}: field {name!r}: {bad.sum()} values are not numbers "
                f"(e.g. {events[name].filter(bad)[0]!r})"
            )
    return cast


def _check_complete(frame: pl.DataFrame, columns: list[str], path: Path, separator: str) -> None:
    """Every line of a header-less ratings file has all four fields (a line is a row)."""
    missing = frame.select(pl.any_horizontal(pl.col(c).is_null() for c in columns)).to_series()
    if missing.any():
        line = int(missing.arg_true()[0]) + 1
        raise DataError(
            f"{path}: {missing.sum()} lines lack a field; the first is line {line} (expected "
            f"user, item, rating, timestamp, {separator}-separated)"
        )


def _require(frame: pl.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column {missing[0]!r} (expected {list(columns)}; "
            f"found {frame.columns})"
        )
