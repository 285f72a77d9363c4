"""Public data sets fetched from their publishers and written as the atomic files (RecBole's tab-separated form,
`name:type` headers) that the recipes in examples/ read: `din-export datasets ml-100k --to DIR`.

MovieLens-100k (F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4),
2015) comes from GroupLens as ml-100k.zip, whose MD5 GroupLens publishes beside it; the archive is checked
against it before anything is unpacked, and the folder is written whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import re
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..files import staged_bundle


class DatasetError(ValueError):
    """A data set could not be fetched, did not match its checksum, or its archive is not the one expected."""


@dataclass(frozen=True)
class Dataset:
    """Where a data set lives and the MD5 its publisher gives for it."""

    url: str
    md5: str
    citation: str


ML_100K = Dataset(
    url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    md5="0e33842e24a9c977be4e0107933c0723",
    citation='F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015',
)
DATASETS = {"ml-100k": ML_100K}
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def fetch(url: str, timeout: float = 60) -> bytes:
    """The bytes at `url` (http, https or file), or a DatasetError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (OSError, ValueError) as error:
        raise DatasetError(f"{url}: cannot be downloaded ({error})") from None


def check_md5(data: bytes, expected: str, url: str) -> None:
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != expected.lower():
        raise DatasetError(f"{url}: MD5 {actual} differs from the published {expected}; the download is damaged or not the data set")


def _member(archive: zipfile.ZipFile, name: str) -> str:
    """A member of the archive (under any top folder) as text; GroupLens wrote ml-100k in ISO-8859-1."""
    found = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == name]
    if not found:
        raise DatasetError(f"the archive has no {name}; is it ml-100k.zip?")
    return archive.read(found[0]).decode("latin-1")


def movielens_100k_files(archive_bytes: bytes) -> dict[str, str]:
    """u.data, u.item, u.user and u.genre as the three atomic files: ratings with their timestamps; items with the
    title (its trailing year moved to release_year) and the genres' names; users with age, gender, occupation and
    zip code."""
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        ratings, items, users, genres_text = (_member(archive, n) for n in ("u.data", "u.item", "u.user", "u.genre"))
    genres = [line.split("|")[0] for line in genres_text.splitlines() if line.strip()]
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += ["\t".join(line.split("\t")[:4]) for line in ratings.splitlines() if line.strip()]
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for line in items.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        named = _YEAR.match(fields[1])
        title, year = (named["title"], named["year"]) if named else (fields[1], fields[2][-4:] if fields[2] else "")
        flags = fields[-len(genres):]
        item.append("\t".join([fields[0], title, year, " ".join(g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1")]))
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += ["\t".join(line.split("|")[:5]) for line in users.splitlines() if line.strip()]
    return {FILES[0]: "\n".join(inter) + "\n", FILES[1]: "\n".join(item) + "\n", FILES[2]: "\n".join(user) + "\n"}


def download(name: str, to: Path, url: str | None = None, md5: str | None = None) -> list[Path]:
    """Fetch data set `name` (from `url` and checked against `md5`, where given, else the publisher's) and write its
    atomic files into the folder `to`, replaced only once every file is complete. Returns the files written."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    dataset = DATASETS[name]
    url = url or dataset.url
    archive = fetch(url)
    check_md5(archive, md5 or dataset.md5, url)
    try:
        files = movielens_100k_files(archive)
    except zipfile.BadZipFile:
        raise DatasetError(f"{url}: not a zip archive") from None
    with staged_bundle(to) as staging:
        for file, text in files.items():
            (staging / file).write_text(text, encoding="utf-8")
    return [to / file for file in files]
