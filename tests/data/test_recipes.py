"""Dataset recipes: synthetic generator properties, MovieLens layouts, ml-100k, user logs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from omegaconf import OmegaConf

from intentrec.config import REPO_ROOT, SyntheticConfig, base_config
from intentrec.data.errors import DataError
from intentrec.data.recipes import load_raw
from intentrec.data.recipes.logs import load_logs
from intentrec.data.recipes.ml100k import load_ml100k
from intentrec.data.recipes.movielens import load_movielens
from intentrec.data.recipes.synthetic import DAY_S, START_TS, generate
from intentrec.data.validate import validate_tables

# ---------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------
SMALL = SyntheticConfig(users=600, items=400, events_per_user=40.0, days=120)


@pytest.fixture(scope="module")
def synthetic() -> pl.DataFrame:
    """Events of the default-size generator joined with their items."""
    raw = validate_tables(generate(SyntheticConfig(), seed=0), "synthetic")
    return raw.events.join(raw.items, on="item_id", how="left")


def test_synthetic_same_seed_same_tables_other_seed_different():
    a, b, c = generate(SMALL, 3), generate(SMALL, 3), generate(SMALL, 4)
    assert a.events.equals(b.events) and a.items.equals(b.items)
    assert not a.events.equals(c.events)
    assert not a.items.equals(c.items)


def test_synthetic_shape_and_schema():
    raw = generate(SMALL, 0)
    assert raw.events.columns == [
        "user_id", "item_id", "timestamp", "action_type", "duration", "planted_intent",
        "session_true",
    ]  # fmt: skip
    assert raw.events.schema["timestamp"] == pl.Int64
    assert raw.items.columns == ["item_id", "genres", "kind", "release_ts"]
    assert raw.items.schema["genres"] == pl.List(pl.Utf8)
    assert raw.items.height == SMALL.items
    assert raw.events["user_id"].n_unique() == SMALL.users
    expected = SMALL.users * SMALL.events_per_user
    assert abs(raw.events.height - expected) < 0.1 * expected
    assert raw.intents == ["action_type", "genre", "kind", "release_bucket"]
    assert raw.weight_column == "duration"
    assert raw.hidden_columns == ["planted_intent", "session_true"]
    assert raw.events["timestamp"].min() >= START_TS
    genre_counts = raw.items["genres"].list.len()
    assert genre_counts.min() == 1 and genre_counts.max() == 3
    assert set(raw.items["kind"].unique()) == {"movie", "show"}
    # Sorted by user, then time, strictly increasing within a user.
    assert raw.events.select(
        (pl.col("timestamp").diff().over("user_id").drop_nulls() > 0).all()
    ).item()
    assert raw.events["user_id"].is_sorted()


def test_synthetic_nothing_is_watched_before_release(synthetic):
    assert (synthetic["timestamp"] >= synthetic["release_ts"]).all()


def test_synthetic_discover_sessions_hold_recent_releases(synthetic):
    discover = synthetic.filter(pl.col("planted_intent") == "discover")
    age = discover["timestamp"] - discover["release_ts"]
    assert ((age >= 0) & (age <= 30 * DAY_S)).mean() >= 0.8
    others = synthetic.filter(pl.col("planted_intent") != "discover")
    others_age = others["timestamp"] - others["release_ts"]
    assert (others_age <= 30 * DAY_S).mean() < 0.5  # the property is specific to discover


def _with_first_watch(events: pl.DataFrame) -> pl.DataFrame:
    """Adds the user's first watch time of the item and the session's start time."""
    return events.with_columns(
        pl.col("timestamp").min().over("user_id", "item_id").alias("first_watch"),
        pl.col("timestamp").min().over("session_true").alias("session_start"),
    )


def test_synthetic_continue_sessions_repeat_a_show_watched_before(synthetic):
    sessions = (
        _with_first_watch(synthetic)
        .filter(pl.col("planted_intent") == "continue")
        .group_by("session_true")
        .agg(
            pl.col("item_id").n_unique().alias("n_items"),
            (pl.col("kind") == "show").all().alias("is_show"),
            (pl.col("first_watch") < pl.col("session_start")).all().alias("seen_before"),
        )
    )
    assert sessions.height > 100
    assert sessions["n_items"].max() == 1
    assert sessions["is_show"].all()
    assert sessions["seen_before"].all()


def test_synthetic_rewatch_items_come_from_earlier_history(synthetic):
    rewatch = _with_first_watch(synthetic).filter(pl.col("planted_intent") == "rewatch")
    assert rewatch.height > 100
    assert (rewatch["first_watch"] < rewatch["session_start"]).all()


def test_synthetic_binge_sessions_share_one_genre(synthetic):
    shared = (
        synthetic.filter(pl.col("planted_intent") == "binge_genre")
        .with_row_index("row")
        .explode("genres")
        .group_by("session_true", "genres")
        .agg(pl.col("row").n_unique().alias("events_with_genre"))
        .join(synthetic.group_by("session_true").agg(pl.len().alias("events")), on="session_true")
        .group_by("session_true")
        .agg((pl.col("events_with_genre") == pl.col("events")).any().alias("one_genre"))
    )
    assert shared["one_genre"].all()


def test_synthetic_first_session_has_no_continue_or_rewatch(synthetic):
    first = synthetic.filter(pl.col("session_true") == pl.col("session_true").min().over("user_id"))
    assert set(first["planted_intent"].unique()) <= {"discover", "binge_genre"}


def test_synthetic_action_type_agrees_with_planted_intent_at_the_stated_rate(synthetic):
    label = {
        "continue": "continue_watching",
        "discover": "new_title",
        "rewatch": "rewatch",
        "binge_genre": "browse",
    }
    agree = synthetic["planted_intent"].replace_strict(label) == synthetic["action_type"]
    assert 0.83 <= agree.mean() <= 0.87
    assert set(synthetic["planted_intent"].unique()) == set(label)


def test_synthetic_sessions_are_separated_by_the_one_hour_gap(synthetic):
    gaps = synthetic.select(
        pl.col("timestamp").diff().over("user_id").alias("gap"),
        (pl.col("session_true").diff().over("user_id") != 0).alias("new_session"),
    ).drop_nulls()
    assert gaps.filter(~pl.col("new_session"))["gap"].max() < 3600
    assert gaps.filter(pl.col("new_session"))["gap"].min() > 3600


def test_synthetic_popularity_is_heavy_tailed(synthetic):
    counts = synthetic["item_id"].value_counts()["count"].sort(descending=True).to_numpy()
    top_decile = counts[: max(1, SyntheticConfig().items // 10)].sum() / counts.sum()
    assert top_decile > 0.4  # uniform would give 0.1


def test_synthetic_durations_depend_on_kind(synthetic):
    longest = synthetic.group_by("kind").agg(pl.col("duration").max())
    by_kind = dict(zip(longest["kind"], longest["duration"]))
    assert by_kind["show"] <= 60 * 60 and 90 * 60 < by_kind["movie"] <= 130 * 60
    assert (synthetic["duration"] > 0).all()


def test_synthetic_200k_events_in_a_few_seconds():
    cfg = SyntheticConfig(users=3300, events_per_user=62.0)
    start = time.perf_counter()
    raw = generate(cfg, 1)
    elapsed = time.perf_counter() - start
    assert raw.events.height > 180_000
    assert elapsed < 3.0


def test_synthetic_bad_config_names_the_key():
    with pytest.raises(DataError, match="data.synthetic.show_fraction"):
        generate(SyntheticConfig(show_fraction=1.5), 0)


def test_load_raw_synthetic_from_the_run_config():
    cfg = base_config()
    cfg.data.synthetic.users = 50
    cfg.data.seed = 7
    raw = load_raw(cfg.data)
    assert raw.events["user_id"].n_unique() == 50
    direct = generate(SyntheticConfig(**OmegaConf.to_container(cfg.data.synthetic)), 7)
    assert raw.events.equals(direct.events)


@pytest.mark.parametrize("name", ["movielens", "logs"])
def test_load_raw_needs_a_path(name):
    cfg = base_config()
    cfg.data.name = name
    with pytest.raises(DataError, match="data.path"):
        load_raw(cfg.data)


# ---------------------------------------------------------------------------------------
# ml-100k from the RecBole wheel (downloaded once into the repo's .cache/)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ml100k():
    cache = REPO_ROOT / ".cache" / "intentrec"
    cached = list((cache / "wheels").glob("recbole-1.2.1-*.whl"))
    try:
        raw = load_ml100k(str(cache))
    except DataError as err:
        if not cached and "pip download" in str(err):
            pytest.skip(f"cannot download the recbole wheel (no network?): {err}")
        raise
    return validate_tables(raw, raw.source)


def test_ml100k_counts_and_known_movie(ml100k):
    assert ml100k.events.height == 100_000
    assert ml100k.events["user_id"].n_unique() == 943
    assert ml100k.items.height == 1682
    assert ml100k.events["item_id"].n_unique() == 1682
    toy_story = ml100k.items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    assert toy_story["release_ts"] == 788_918_400  # 1995-01-01
    assert toy_story["title"] == "Toy Story"
    assert ml100k.items["release_ts"].null_count() == 1  # item 267 "unkonwn"
    assert sorted(ml100k.events["rating"].unique().to_list()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert ml100k.intents == ["genre", "release_bucket", "engagement"]
    assert ml100k.weight_column == "rating"


def test_ml100k_uses_the_cached_wheel_and_reports_a_failed_download(ml100k, tmp_path, monkeypatch):
    import subprocess

    from intentrec.data.recipes import ml100k as recipe

    def no_network(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(recipe.subprocess, "run", no_network)
    with pytest.raises(DataError, match=r"'pip download recbole==1.2.1' into .*wheels failed"):
        load_ml100k(str(tmp_path))
    # With the wheel in the cache, pip is not called at all.
    (tmp_path / "wheels").mkdir(exist_ok=True)
    shutil.copy(ml100k.source.split(":recbole/")[0], tmp_path / "wheels")
    assert load_ml100k(str(tmp_path)).events.height == 100_000


# ---------------------------------------------------------------------------------------
# MovieLens folders (tiny fake files of each layout)
# ---------------------------------------------------------------------------------------
def _check_movielens(raw, users: int, items: int, events: int) -> None:
    raw = validate_tables(raw, raw.source)
    assert raw.events.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert (raw.events.height, raw.events["user_id"].n_unique(), raw.items.height) == (
        events,
        users,
        items,
    )
    assert raw.events.schema["timestamp"] == pl.Int64
    assert raw.items.schema["genres"] == pl.List(pl.Utf8)
    assert raw.intents == ["genre", "release_bucket", "engagement"]


def test_movielens_1m_dat_layout_latin1(tmp_path):
    (tmp_path / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    (tmp_path / "movies.dat").write_bytes(
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "1193::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1")
    )
    raw = load_movielens(str(tmp_path))
    _check_movielens(raw, users=2, items=2, events=3)
    assert "ratings.dat" in raw.source
    row = raw.items.filter(pl.col("item_id") == 1193).row(0, named=True)
    assert row["title"] == "Misérables, Les (1995)"
    assert row["genres"] == ["Drama", "Musical"]
    assert row["release_ts"] == 788_918_400
    assert raw.events.row(0) == (1, 1193, 978300760, 5.0)


def test_movielens_20m_csv_layout(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n"
        "7,2,4.0,1094785740\n"
    )
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        '2,"Jumanji, The (1995)",Adventure|Children|Fantasy\n'
        "29,Untitled,(no genres listed)\n"
    )
    raw = load_movielens(str(tmp_path))
    _check_movielens(raw, users=2, items=2, events=3)
    items = raw.items.sort("item_id")
    assert items["genres"].to_list() == [["Adventure", "Children", "Fantasy"], []]
    assert items["release_ts"].to_list() == [788_918_400, None]
    assert items["title"][0] == "Jumanji, The (1995)"


def _write_100k(folder: Path, with_genre_file: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t1\t1\n"
    )
    flags_242 = ["0"] * 19
    flags_242[3] = flags_242[4] = flags_242[5] = "1"  # Animation, Children's, Comedy
    flags_302 = ["1"] + ["0"] * 18  # unknown only
    (folder / "u.item").write_bytes(
        (
            "242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(flags_242) + "\n"
            "302|L.A. Confidentiél (1997)|||http://y|" + "|".join(flags_302) + "\n"
        ).encode("latin-1")
    )
    if with_genre_file:
        names = ["unknown", "Action", "Adventure", "Cartoon", "Kids", "Funny"] + [
            f"g{i}" for i in range(6, 19)
        ]
        (folder / "u.genre").write_text("".join(f"{n}|{i}\n" for i, n in enumerate(names)))


@pytest.mark.parametrize("with_genre_file", [False, True])
def test_movielens_100k_layout(tmp_path, with_genre_file):
    _write_100k(tmp_path, with_genre_file)
    raw = load_movielens(str(tmp_path))
    _check_movielens(raw, users=2, items=2, events=3)
    items = raw.items.sort("item_id")
    expected = (
        ["Cartoon", "Kids", "Funny"] if with_genre_file else ["Animation", "Children's", "Comedy"]
    )
    assert items["genres"].to_list() == [expected, []]
    # Release year from the release date, else from the title.
    assert items["release_ts"].to_list() == [852_076_800, 852_076_800]
    assert items["title"][1] == "L.A. Confidentiél (1997)"


def test_movielens_finds_the_single_extracted_subfolder(tmp_path):
    _write_100k(tmp_path / "ml-100k", with_genre_file=False)
    raw = load_movielens(str(tmp_path))
    assert str(tmp_path / "ml-100k") in raw.source


def test_movielens_errors_name_the_folder_or_file(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=f"{tmp_path}: no known MovieLens layout"):
        load_movielens(str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_movielens(str(tmp_path / "missing"))
    (tmp_path / "ratings.dat").write_text("1::2::3::4\n")
    with pytest.raises(DataError, match="has ratings.dat but not movies.dat"):
        load_movielens(str(tmp_path))
    (tmp_path / "movies.dat").write_text("2::Film (1990)::Drama\n")
    (tmp_path / "ratings.dat").write_text("1::2::3::4\n1::2::x::5\n")
    with pytest.raises(DataError, match=r"ratings.dat: field 'rating': 1 values are not numbers"):
        load_movielens(str(tmp_path))
    (tmp_path / "ratings.dat").write_text("1::2::3::4\n")
    (tmp_path / "movies.dat").write_text("2::Film (1990)::Drama\nbroken line\n")
    with pytest.raises(DataError, match=r"movies.dat: 1 lines are not 'MovieID::Title::Genres'"):
        load_movielens(str(tmp_path))


# ---------------------------------------------------------------------------------------
# User logs with a YAML column mapping
# ---------------------------------------------------------------------------------------
def _write_logs(folder: Path) -> None:
    (folder / "events.csv").write_text(
        "account,title,played_at,entry,secs,device\n"
        "u1,007,2024-01-01T10:00:00Z,continue,600,tv\n"
        "u1,042,2024-01-01T11:30:00+01:00,search,1200,tv\n"
        "u2,007,2024-01-02 08:00:00,row,30,phone\n"
    )
    pl.DataFrame(
        {
            "title": ["007", "042"],
            "genre_text": ["Action| Spy", "Drama"],
            "format": ["movie", "show"],
            "released": ["2023-12-25", "2020-05-01T00:00:00Z"],
        }
    ).write_parquet(folder / "titles.parquet")


def _mapping(folder: Path, text: str) -> str:
    path = folder / "mapping.yaml"
    path.write_text(text)
    return str(path)


FULL_MAPPING = """
events:
  path: events.csv
  user: account
  item: title
  time: played_at
  time_unit: iso
  action_type: entry
  duration: secs
  extra: [device]
items:
  path: titles.parquet
  item: title
  genres: genre_text
  genres_sep: "|"
  kind: format
  release: released
  release_unit: iso
"""


def test_logs_csv_events_with_parquet_items(tmp_path):
    _write_logs(tmp_path)
    raw = validate_tables(load_logs(_mapping(tmp_path, FULL_MAPPING)), "logs")
    assert raw.events.columns == [
        "user_id", "item_id", "timestamp", "action_type", "duration", "device",
    ]  # fmt: skip
    # Ids read from CSV keep their leading zeros; offsets are respected, naive = UTC.
    assert raw.events["item_id"].to_list() == ["007", "042", "007"]
    assert raw.events["timestamp"].to_list() == [1_704_103_200, 1_704_105_000, 1_704_182_400]
    items = raw.items.sort("item_id")
    assert items["genres"].to_list() == [["Action", "Spy"], ["Drama"]]
    assert items["release_ts"].to_list() == [1_703_462_400, 1_588_291_200]
    assert raw.intents == ["action_type", "genre", "kind", "release_bucket"]
    assert raw.weight_column == "duration"


def test_logs_jsonl_ms_times_items_from_the_events_file(tmp_path):
    (tmp_path / "log.jsonl").write_text(
        '{"u": 1, "i": 5, "t": 1704067200000, "g": "a|b", "rate": 4}\n'
        '{"u": 1, "i": 6, "t": 1704067260999, "g": "c", "rate": 2}\n'
        '{"u": 2, "i": 5, "t": 1704067300000, "g": "a|b", "rate": 5}\n'
    )
    mapping = _mapping(
        tmp_path,
        "events: {path: log.jsonl, user: u, item: i, time: t, time_unit: ms, rating: rate}\n"
        "items: {genres: g, genres_sep: '|'}\n",
    )
    raw = validate_tables(load_logs(mapping), "logs")
    assert raw.events["timestamp"].to_list() == [1_704_067_200, 1_704_067_260, 1_704_067_300]
    assert raw.items.sort("item_id").rows() == [(5, ["a", "b"]), (6, ["c"])]
    assert raw.intents == ["genre", "engagement"]
    assert raw.weight_column == "rating"


def test_logs_parquet_datetime_times_and_list_genres(tmp_path):
    pl.DataFrame(
        {
            "user": ["a", "a"],
            "item": [1, 2],
            "at": pl.Series(
                ["2024-01-01 00:00:01", "2024-01-01 00:00:02"], dtype=pl.Utf8
            ).str.to_datetime(time_zone="UTC"),
        }
    ).write_parquet(tmp_path / "e.parquet")
    pl.DataFrame(
        {"item": [1, 2], "tags": [["x", " y "], None], "year": [1999, None]}
    ).write_parquet(tmp_path / "i.parquet")
    mapping = _mapping(
        tmp_path,
        "events: {path: e.parquet, user: user, item: item, time: at}\n"
        "items: {path: i.parquet, genres: tags, release: year, release_unit: year}\n",
    )
    raw = validate_tables(load_logs(mapping), "logs")
    assert raw.events["timestamp"].to_list() == [1_704_067_201, 1_704_067_202]
    assert raw.items.rows() == [(1, ["x", "y"], 915_148_800), (2, [], None)]


def test_logs_without_items_section_use_distinct_event_items(tmp_path):
    _write_logs(tmp_path)
    mapping = _mapping(
        tmp_path,
        "events: {path: events.csv, user: account, item: title, time: played_at, time_unit: iso}\n",
    )
    raw = validate_tables(load_logs(mapping), "logs")
    assert raw.items.columns == ["item_id"]
    assert raw.items["item_id"].to_list() == ["007", "042"]
    assert raw.intents == [] and raw.weight_column is None


@pytest.mark.parametrize(
    ("events_yaml", "fragments"),
    [
        (
            "{path: events.csv, user: account, item: title, time: when}",
            ["events.csv", "column 'when'", "events.time", "'played_at'"],
        ),
        (
            "{path: events.csv, user: account, item: title, time: played_at, time_unit: s}",
            ["events.csv", "column 'played_at'", "3 timestamps", "'2024-01-01T10:00:00Z'"],
        ),
        (
            "{path: events.csv, user: account, item: title, time: played_at, time_unit: days}",
            ["mapping.yaml", "events.time_unit", "'days'"],
        ),
        (
            "{path: nope.csv, user: account, item: title, time: played_at}",
            ["nope.csv", "file not found", "events.path"],
        ),
        (
            "{path: events.csv, user: account, item: title, tme: played_at}",
            ["mapping.yaml", "unknown key 'events.tme'", "did you mean 'events.time'"],
        ),
        (
            "{path: events.csv, user: account, item: title, time: played_at, time_unit: iso,"
            " extra: [nope]}",
            ["events.csv", "column 'nope'", "events.extra"],
        ),
    ],
)
def test_logs_errors_name_file_key_and_column(tmp_path, events_yaml, fragments):
    _write_logs(tmp_path)
    with pytest.raises(DataError) as caught:
        load_logs(_mapping(tmp_path, f"events: {events_yaml}\n"))
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_logs_unparsable_iso_time_gives_count_and_example(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t\n1,1,2024-01-01T00:00:00\n1,2,soon\n2,1,later\n")
    mapping = _mapping(
        tmp_path, "events: {path: e.csv, user: u, item: i, time: t, time_unit: iso}\n"
    )
    with pytest.raises(DataError, match=r"e.csv: column 't': 2 timestamps .* \(e.g. 'soon'\)"):
        load_logs(mapping)


def test_logs_empty_files_and_conflicting_item_metadata(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    mapping = _mapping(tmp_path, "events: {path: empty.csv, user: u, item: i, time: t}\n")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        load_logs(mapping)
    (tmp_path / "header.csv").write_text("u,i,t\n")
    mapping = _mapping(tmp_path, "events: {path: header.csv, user: u, item: i, time: t}\n")
    with pytest.raises(DataError, match="header.csv: has no rows"):
        load_logs(mapping)
    (tmp_path / "e.csv").write_text("u,i,t,k\n1,1,10,movie\n1,1,20,show\n")
    mapping = _mapping(
        tmp_path, "events: {path: e.csv, user: u, item: i, time: t}\nitems: {kind: k}\n"
    )
    with pytest.raises(DataError, match=r"e.csv: 1 items have differing metadata .*'1'"):
        load_logs(mapping)


def test_logs_extra_column_named_like_a_canonical_one_is_refused(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t,rating\n1,1,10,3\n")
    mapping = _mapping(
        tmp_path, "events: {path: e.csv, user: u, item: i, time: t, extra: [rating]}\n"
    )
    with pytest.raises(DataError, match="events.extra.*'rating'"):
        load_logs(mapping)


def test_logs_through_load_raw_validates(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t\n1,1,10\n1,2,20\n")
    (tmp_path / "items.csv").write_text("i,kind\n1,movie\n")
    mapping = _mapping(
        tmp_path,
        "events: {path: e.csv, user: u, item: i, time: t}\nitems: {path: items.csv, kind: kind}\n",
    )
    cfg = base_config()
    cfg.data.name = "logs"
    cfg.data.path = mapping
    with pytest.raises(DataError, match=r"1 item ids missing from the items table .*'2'"):
        load_raw(cfg.data)


def test_synthetic_sparse_catalogue_falls_back_without_pre_release_watches():
    # 6 items over 400 days: most discover windows are empty, so the fallbacks are used.
    raw = generate(SyntheticConfig(users=40, items=6, genres=3, days=400), 5)
    joined = raw.events.join(raw.items, on="item_id")
    assert joined.height == raw.events.height
    assert (joined["timestamp"] >= joined["release_ts"]).all()
    assert joined["timestamp"].dtype == pl.Int64 and joined["timestamp"].min() >= START_TS
