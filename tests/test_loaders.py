"""Loaders: every format on tiny files, and every kind of bad input with the message it deserves."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.data.loaders import (
    ML100K_GENRES,
    load,
    load_directory,
    load_lines,
    load_movielens,
    load_recbole,
    load_table,
)
from lmrec.errors import ConfigError, DataError


def write(directory: Path, name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
    path = directory / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def raw_pairs(ds) -> list[tuple[str, str]]:
    """(user, item) raw IDs of the interactions, in the dataset's (time) order."""
    inter = ds.interactions
    return list(zip(ds.users.raw(inter["user"]), ds.items.raw(inter["item"]), strict=True))


def expect_error(match_parts: list[str], fn, *args, **kwargs) -> DataError:
    """Call ``fn``; it must raise DataError whose message contains every part."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for part in match_parts:
        assert part in message, f"{part!r} not in {message!r}"
    return info.value


# -- MovieLens ------------------------------------------------------------------------------------

ML100K_ITEMS = (
    "1|Toy Story (1995)|01-Jan-1995||http://x/1|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Crème de la Crème (1998)|01-Jan-1998||http://x/2|0|0|0|0|0|0|0|0|1|0|0|0|0|0|1|0|0|0|0\n"
    "3|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    write(tmp_path, "u.data", "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250940\n2\t3\t1\t881250999\n")
    write(tmp_path, "u.item", ML100K_ITEMS, encoding="latin-1")
    genres = "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n"
    write(tmp_path, "u.genre", genres)
    write(tmp_path, "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return tmp_path


def test_movielens_100k(ml100k: Path) -> None:
    ds = load_movielens(ml100k)
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2, 3, 4)
    assert ds.has_ratings
    # time order across users: user 2's 881250940 comes first
    assert raw_pairs(ds) == [("2", "1"), ("1", "1"), ("1", "2"), ("2", "3")]
    assert ds.interactions["timestamp"].is_monotonic_increasing
    cat = ds.catalog.set_index("item")
    assert cat.loc["1", "title"] == "Toy Story (1995)"
    assert cat.loc["1", "year"] == 1995
    assert cat.loc["1", "categories"] == ["Animation", "Children's", "Comedy"]
    assert cat.loc["2", "title"] == "Crème de la Crème (1998)"  # latin-1 decoded
    assert cat.loc["2", "categories"] == ["Drama", "Romance"]
    assert pd.isna(cat.loc["3", "year"])
    assert cat.loc["3", "categories"] == ["unknown"]
    assert ds.user_features is not None
    assert list(ds.user_features["user"]) == ["1", "2"]
    assert ds.meta["format"] == "movielens"


def test_movielens_100k_without_genre_file_uses_standard_names(ml100k: Path) -> None:
    (ml100k / "u.genre").unlink()
    ds = load_movielens(ml100k)
    assert ds.catalog.set_index("item").loc["1", "categories"] == ["Animation", "Children's", "Comedy"]


def test_movielens_1m(tmp_path: Path) -> None:
    write(tmp_path, "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    write(
        tmp_path,
        "movies.dat",
        "10::Heat (1995)::Action|Crime|Thriller\n20::Amélie (2001)::Comedy|Romance\n",
        "latin-1",
    )
    write(tmp_path, "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = load(tmp_path / "ratings.dat")  # a ratings.dat file loads its directory
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2, 2, 3)
    cat = ds.catalog.set_index("item")
    assert cat.loc["10", "categories"] == ["Action", "Crime", "Thriller"]
    assert cat.loc["20", "title"] == "Amélie (2001)"
    assert cat.loc["20", "year"] == 2001
    assert ds.user_features is not None and list(ds.user_features.columns)[:3] == ["user", "gender", "age"]


def test_movielens_malformed_row_names_line(ml100k: Path) -> None:
    write(ml100k, "u.data", "1\t1\t5\t881250949\n1\t2\t3\n")
    expect_error(["u.data", "line 2", "malformed row", "3 field(s), expected 4"], load_movielens, ml100k)


@pytest.mark.filterwarnings("ignore:Could not infer format")  # schema tries dates
def test_movielens_bad_timestamp_names_line_and_column(ml100k: Path) -> None:
    write(ml100k, "u.data", "1\t1\t5\t881250949\n1\t2\t3\t8812x0950\n")
    expect_error(["u.data", "line 2", "'timestamp'", "'8812x0950' is not a number"], load_movielens, ml100k)


def test_movielens_duplicate_item_in_catalog(ml100k: Path) -> None:
    write(ml100k, "u.item", ML100K_ITEMS + ML100K_ITEMS.splitlines(keepends=True)[0], encoding="latin-1")
    expect_error(["u.item", "line 4", "'1' appears again (first at line 1)"], load_movielens, ml100k)


def test_not_a_movielens_directory(tmp_path: Path) -> None:
    expect_error(["not a MovieLens directory"], load_movielens, tmp_path)


# -- RecBole --------------------------------------------------------------------------------------


@pytest.fixture
def recbole(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t4\t100\nu1\ti2\t2\t50\nu2\ti2\t5\t75\n",
    )
    write(
        tmp_path,
        "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\n"
        'i1\tToy "Story"\t1995\tAnimation Children\'s Comedy\t9.5\n'
        "i2\tHeat\t1995\tAction Film-Noir\t3\n"
        "i3\tCold Item\t2001\tDrama\t1\n",
    )
    write(tmp_path, "toy.user", "user_id:token\tage:token\nu1\t24\nu2\t53\n")
    return tmp_path


def test_recbole_directory_and_file(recbole: Path) -> None:
    ds = load_recbole(recbole)
    assert ds.name == "toy"
    assert raw_pairs(ds) == [("u1", "i2"), ("u2", "i2"), ("u1", "i1")]
    assert list(ds.interactions["rating"]) == [2.0, 5.0, 4.0]
    cat = ds.catalog.set_index("item")
    assert cat.loc["i1", "title"] == 'Toy "Story"'  # quotes are data in atomic files
    assert cat.loc["i1", "categories"] == ["Animation", "Children's", "Comedy"]
    assert cat.loc["i2", "categories"] == ["Action", "Film-Noir"]
    assert cat.loc["i1", "year"] == 1995
    assert cat.loc["i2", "price"] == "3"  # other columns are kept
    assert "i3" in ds.items  # catalog-only items are kept as cold items
    assert ds.user_features is not None and list(ds.user_features["user"]) == ["u1", "u2"]
    same = load(recbole / "toy.inter")
    assert raw_pairs(same) == raw_pairs(ds)


def test_recbole_without_timestamp_uses_file_order(tmp_path: Path) -> None:
    write(tmp_path, "x.inter", "user_id:token\titem_id:token\nb\t2\na\t1\n")
    ds = load(tmp_path)
    assert raw_pairs(ds) == [("b", "2"), ("a", "1")]
    assert list(ds.interactions["timestamp"]) == [0, 1]


def test_recbole_bad_rating(recbole: Path) -> None:
    write(recbole, "toy.inter", "user_id:token\titem_id:token\trating:float\nu1\ti1\t4\nu1\ti2\tgood\n")
    expect_error(["toy.inter", "line 3", "'rating'", "'good' is not a number"], load_recbole, recbole)


def test_recbole_several_inter_files(recbole: Path) -> None:
    write(recbole, "other.inter", "user_id:token\titem_id:token\nu\ti\n")
    expect_error(["several .inter files", "other.inter", "toy.inter"], load_recbole, recbole)


# -- tables ---------------------------------------------------------------------------------------


def test_csv_with_standard_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,timestamp,rating,event\nu1,a,3,5,buy\nu2,b,1,4,view\nu1,b,2,3,view\n")
    ds = load(path)
    assert ds.name == "log"
    assert raw_pairs(ds) == [("u2", "b"), ("u1", "b"), ("u1", "a")]
    assert list(ds.interactions["event"]) == ["view", "view", "buy"]
    assert ds.meta["ignored_columns"] == []


def test_csv_quoted_fields_and_ids_are_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", 'user,item,note\n" u1 ","a, b","x"\nu2,c,"multi\nline"\n')
    ds = load_table(path)
    assert raw_pairs(ds) == [("u1", "a, b"), ("u2", "c")]
    assert ds.meta["ignored_columns"] == ["note"]


def test_column_map(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "orders.csv",
        "customer,sku,when,stars\nc1,s1,2021-03-04 10:00,5\nc2,s1,2021-03-01 09:00,2\nc3,s2,2021-03-05,1\n",
    )
    ds = load(path, columns={"user": "customer", "item": "sku", "timestamp": "when", "rating": "stars"})
    assert raw_pairs(ds) == [("c2", "s1"), ("c1", "s1"), ("c3", "s2")]  # ISO dates, mixed precision
    assert int(ds.interactions["timestamp"].iloc[0]) == int(pd.Timestamp("2021-03-01 09:00", tz="UTC").timestamp())


def test_aliases_are_recognised(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,ts\n1,10,4.5,20\n2,10,3,10\n")
    ds = load(path)
    assert raw_pairs(ds) == [("2", "10"), ("1", "10")]
    assert list(ds.interactions["rating"]) == [3.0, 4.5]


def test_ambiguous_aliases_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user_id,userId,item\n1,1,a\n")
    expect_error(["log.csv", "'user_id'", "'userId'", "could each be the 'user' column"], load, path)


def test_column_map_to_absent_column(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "a,b\n1,2\n")
    expect_error(["log.csv", "mapped to 'sku'", "['a', 'b']"], load, path, columns={"user": "a", "item": "sku"})


def test_column_map_with_unknown_target(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item\n1,2\n")
    with pytest.raises(ConfigError, match="colour"):
        load(path, columns={"colour": "user"})


def test_tsv_gzip_and_parquet(tmp_path: Path) -> None:
    rows = "user\titem\tts\nu1\ta\t2\nu2\tb\t1\n"
    tsv = load(write(tmp_path, "log.tsv", rows))
    gz = load(write(tmp_path, "log.csv.gz", gzip.compress(rows.replace("\t", ",").encode())))
    assert raw_pairs(tsv) == raw_pairs(gz) == [("u2", "b"), ("u1", "a")]
    assert gz.name == "log"
    frame = pd.DataFrame(
        {"user_id": [7, 8], "item_id": [1.0, 2.0], "time": pd.to_datetime(["2020-01-02", "2020-01-01"])}
    )
    frame.to_parquet(tmp_path / "log.parquet")
    pq = load(tmp_path / "log.parquet")
    assert raw_pairs(pq) == [("8", "2"), ("7", "1")]  # float ids that are whole numbers lose the ".0"
    assert int(pq.interactions["timestamp"].iloc[0]) == int(pd.Timestamp("2020-01-01", tz="UTC").timestamp())


def test_table_without_timestamp_keeps_file_order(tmp_path: Path) -> None:
    ds = load(write(tmp_path, "log.csv", "user,item\nz,9\na,1\nz,1\n"))
    assert raw_pairs(ds) == [("z", "9"), ("a", "1"), ("z", "1")]
    assert list(ds.interactions["timestamp"]) == [0, 1, 2]


def test_table_with_items_file(tmp_path: Path) -> None:
    inter = write(tmp_path, "log.csv", "user,item\nu,a\n")
    items = write(tmp_path, "cat.csv", "item_id,name,genres,description\na,Alpha,x|y,first\nb,Beta,z,cold\n")
    ds = load_table(inter, items_path=items)
    cat = ds.catalog.set_index("item")
    assert cat.loc["a", "title"] == "Alpha"
    assert cat.loc["a", "categories"] == ["x", "y"]
    assert cat.loc["b", "description"] == "cold"


# -- bad tables -----------------------------------------------------------------------------------


def test_malformed_row_counts_header_blank_lines_and_multiline_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", 'user,item,note\nu1,a,"two\nlines"\n\nu2,b,ok\nu3,c\n')
    expect_error(["log.csv", "line 6", "malformed row", "2 field(s), expected 3"], load, path)


def test_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item\nu1,a\nu2,b,extra\n")
    expect_error(["log.csv", "line 3", "malformed row", "3 field(s), expected 2"], load, path)


def test_value_error_line_accounts_for_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,rating\n\nu1,a,5\n\n\nu2,b,five\n")
    expect_error(["log.csv", "line 6", "column 'rating'", "'five' is not a number"], load, path)


def test_missing_column_lists_what_is_there(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "customer,product\n1,2\n")
    err = expect_error(["log.csv", "missing column 'user', 'item'", "['customer', 'product']"], load, path)
    assert err.hint is not None and "columns=" in err.hint


def test_semicolon_file_gets_a_separator_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user;item\n1;2\n")
    expect_error(["log.csv", "missing column", "separated by something other than ','"], load, path)


@pytest.mark.filterwarnings("ignore:Could not infer format")  # schema tries dates
def test_non_numeric_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,ts\nu1,a,5\nu2,b,yesterday-ish\n")
    expect_error(["log.csv", "line 3", "column 'ts'", "'yesterday-ish' is not a number"], load, path)


def test_empty_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,timestamp\nu1,a,5\nu2,b,\n")
    expect_error(["log.csv", "line 3", "'timestamp'"], load, path)


def test_empty_file(tmp_path: Path) -> None:
    expect_error(["log.csv", "file is empty"], load, write(tmp_path, "log.csv", ""))
    expect_error(["log.txt", "file is empty"], load, write(tmp_path, "log.txt", "\n\n"))


def test_header_only(tmp_path: Path) -> None:
    expect_error(["log.csv", "no data rows"], load, write(tmp_path, "log.csv", "user,item\n"))


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", b"user,item\nu1,a\nu2,caf\xe9\n")
    err = expect_error(["log.csv", "line 3", "0xe9", "not valid UTF-8", "re-save the file as UTF-8"], load, path)
    assert err.line == 3


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    ds = load(write(tmp_path, "log.csv", "\ufeffuser,item\nu1,é\n"))
    assert raw_pairs(ds) == [("u1", "é")]
    path = write(tmp_path, "bad.csv", b"\xef\xbb\xbfuser,item\nu1,a\n\xe9,b\n")
    expect_error(["bad.csv", "line 3", "0xe9"], load, path)


def test_empty_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item\nu1,a\n  ,b\n")
    expect_error(["log.csv", "line 3", "column 'user'", "empty id"], load, path)
    path = write(tmp_path, "log2.csv", "uid,iid\nu1,a\nu2,\n")
    expect_error(["log2.csv", "line 3", "column 'iid'", "empty id"], load, path)


def test_empty_id_in_parquet_names_the_row(tmp_path: Path) -> None:
    pd.DataFrame({"user": ["u1", None], "item": ["a", "b"]}).to_parquet(tmp_path / "log.parquet")
    expect_error(["log.parquet", "row 2", "empty id"], load, tmp_path / "log.parquet")


def test_unterminated_quote(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", 'user,item\nu1,"a\n')
    expect_error(["log.csv", "malformed row"], load, path)


def test_duplicate_header_name(tmp_path: Path) -> None:
    expect_error(
        ["log.csv", "line 1", "'user' appears twice"],
        load,
        write(tmp_path, "log.csv", "user,user,item\n1,2,3\n"),
    )


# -- one pair per line ----------------------------------------------------------------------------


def test_lines_file_order_is_time(tmp_path: Path) -> None:
    path = write(tmp_path, "ml-1m.txt", "2 5\n1 3\n\n1 1\n2\t 4 \n")
    ds = load(path)
    assert ds.name == "ml-1m"
    assert raw_pairs(ds) == [("2", "5"), ("1", "3"), ("1", "1"), ("2", "4")]
    assert list(ds.interactions["timestamp"]) == [0, 1, 2, 3]
    assert load_lines(path).n_items == 4


def test_lines_extra_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "seq.txt", "1 1\n\n1 2 5\n")
    expect_error(["seq.txt", "line 3", "malformed row", "3 field(s), expected 2"], load, path)


# -- directories and dispatch ---------------------------------------------------------------------


def test_directory(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user,item,timestamp\nu1,a,1\nu1,b,2\nu2,a,3\n")
    write(
        tmp_path,
        "items.csv",
        "item,title,genres,description\na,Alpha,x|y,An item\nb,Beta,,Another\nc,Gamma,z,Cold\n",
    )
    pd.DataFrame({"user": ["u1", "u2"], "age": [30, 40]}).to_parquet(tmp_path / "users.parquet")
    ds = load(tmp_path)
    assert ds.name == tmp_path.name
    assert ds.meta["format"] == "directory"
    assert (ds.n_users, ds.n_items) == (2, 3)
    cat = ds.catalog.set_index("item")
    assert cat.loc["a", "categories"] == ["x", "y"]
    assert cat.loc["b", "categories"] == []
    assert cat.loc["c", "title"] == "Gamma"
    assert ds.user_features is not None and list(ds.user_features["age"]) == [30, 40]
    assert load_directory(tmp_path).n_items == 3


def test_directory_with_duplicate_catalog_item(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user,item\nu1,a\n")
    write(tmp_path, "items.csv", "item,title\na,A\nb,B\na,A again\n")
    expect_error(["items.csv", "line 4", "'a' appears again (first at line 2)"], load, tmp_path)


def test_directory_with_two_interaction_files(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user,item\nu1,a\n")
    pd.DataFrame({"user": ["u"], "item": ["i"]}).to_parquet(tmp_path / "interactions.parquet")
    expect_error(["several interactions files"], load, tmp_path)


def test_unsupported_inputs(tmp_path: Path) -> None:
    expect_error(
        ["data.json", "unsupported format", ".csv", ".txt", "RecBole"],
        load,
        write(tmp_path, "data.json", "{}"),
    )
    expect_error(["no such file"], load, tmp_path / "missing.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(["no data found", "interactions"], load, empty)


def test_column_map_is_refused_for_fixed_formats(tmp_path: Path) -> None:
    path = write(tmp_path, "seq.txt", "1 1\n")
    with pytest.raises(ConfigError, match="column map"):
        load(path, columns={"user": "x"})


def test_loaded_ids_are_consistent_with_vocabularies(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 200), rng.integers(0, 30, 200)
    lines = "".join(f"{u},{i},{t}\n" for t, (u, i) in enumerate(zip(users, items, strict=True)))
    ds = load(write(tmp_path, "log.csv", "user,item,timestamp\n" + lines))
    assert raw_pairs(ds) == [(str(u), str(i)) for u, i in zip(users, items, strict=True)]
    assert re.fullmatch(r"\d+", ds.items.ids[0])
