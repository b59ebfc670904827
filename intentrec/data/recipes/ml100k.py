"""MovieLens ml-100k from the copy shipped inside the ``recbole==1.2.1`` wheel on PyPI.

Why this route: GroupLens downloads are not reachable from every machine, but PyPI is, and
RecBole's wheel carries the atomic files ``recbole/dataset_example/ml-100k/ml-100k.inter``
(``user_id:token  item_id:token  rating:float  timestamp:float``) and ``ml-100k.item``
(``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``, genres
space-separated). We download the wheel once with ``pip download --no-deps`` into
``<cache_dir>/wheels`` and read the two files straight from the zip; RecBole itself is
never installed or imported.

Canonical output: 943 users, 1682 items, 100000 events. Genres: the ``class`` field split
on spaces, with the placeholder genre ``unknown`` (2 items) mapped to an empty list.
``release_ts``: 1 January of ``release_year`` (UTC); where that field is not a year (item
267 "unkonwn", item 1412 "V") the year in the title's "(YYYY)" is used if present, else null.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.recipes.movielens import LABELLED_INTENTS, release_from_year, split_genres

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
MEMBER_DIR = "recbole/dataset_example/ml-100k"


def load_ml100k(cache_dir: str) -> RawTables:
    """Load ml-100k (downloading the RecBole wheel into ``cache_dir/wheels`` on first use)."""
    wheel = _cached_wheel(Path(cache_dir) / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        inter = _read_atomic(archive, f"{MEMBER_DIR}/ml-100k.inter", wheel)
        item = _read_atomic(archive, f"{MEMBER_DIR}/ml-100k.item", wheel)

    events = inter.select(
        pl.col("user_id").cast(pl.Int64),
        pl.col("item_id").cast(pl.Int64),
        pl.col("timestamp").cast(pl.Int64),
        pl.col("rating").cast(pl.Float64),
    )
    items = item.select(
        pl.col("item_id").cast(pl.Int64),
        split_genres(pl.col("class"), " ").alias("genres"),
        release_from_year(pl.col("release_year"), pl.col("movie_title")).alias("release_ts"),
        pl.col("movie_title").alias("title"),
    )
    return RawTables(
        name="ml-100k",
        events=events,
        items=items,
        intents=list(LABELLED_INTENTS),
        weight_column="rating",
        source=f"{wheel}:{MEMBER_DIR}",
        hidden_columns=["title"],
    )


def _cached_wheel(wheel_dir: Path) -> Path:
    cached = sorted(wheel_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if cached:
        return cached[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading recbole==%s wheel (ml-100k files) into %s", RECBOLE_VERSION, wheel_dir)
    command = [
        sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}", "--no-deps",
        "--only-binary", ":all:", "--disable-pip-version-check", "-q", "-d", str(wheel_dir),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(
            f"ml-100k: could not run pip to download recbole=={RECBOLE_VERSION}: {err}"
        ) from None
    cached = sorted(wheel_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if result.returncode != 0 or not cached:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(
            f"ml-100k: 'pip download recbole=={RECBOLE_VERSION}' into {wheel_dir} failed "
            f"(exit {result.returncode}): {detail}"
        )
    return cached[0]


def _read_atomic(archive: zipfile.ZipFile, member: str, wheel: Path) -> pl.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type``; types are dropped."""
    try:
        raw = archive.read(member)
    except KeyError:
        raise DataError(f"{wheel}: has no member {member!r}") from None
    frame = pl.read_csv(
        io.BytesIO(raw),
        separator="\t",
        infer_schema=False,  # everything as text; each column is cast explicitly
        quote_char=None,
    )
    return frame.rename({name: name.split(":", 1)[0] for name in frame.columns})
