"""The held-out corpora of the generalize benchmark: English prose from pinned Debian packages,
each fetched once (`apt-get download PACKAGE=VERSION`, no root), unpacked with `dpkg-deb -x` and
extracted to one plain UTF-8 .txt by the same rule, so that anyone can rebuild the same text.

    prepare(CORPORA["jargon"], cache)   the corpus's .txt in `cache`, and what it is (chars, sha256)

They only check the recipes, which were tuned on Tiny Shakespeare; a figure on them must never
feed back into a recipe. Each corpus names its package, version, members (globs inside the
unpacked package, read in sorted order) and a reader for one member; `normalise` then applies
the one rule for all of them (see its docstring). The .deb is kept in the cache (a machine
without apt can be given the file); the text is extracted afresh on every call, so a change of
rule never leaves a stale text, and its sha256 is checked against the one pinned here.
"""

from __future__ import annotations

import fnmatch
import functools
import gzip
import hashlib
import html.parser
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("SPEEDRUN_BENCH_CORPORA", "~/.cache/speedrun-bench/corpora")).expanduser()


# --- readers: one member of a package to text ---------------------------------------
def read_text(path: Path) -> str:
    """A plain or gzip-compressed UTF-8 text file."""
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")


def read_fortunes(path: Path) -> str:
    """A fortune file: quotations separated by lines of a lone %, which become blank lines."""
    return re.sub(r"^%$", "", read_text(path), flags=re.MULTILINE)


class _Text(html.parser.HTMLParser):
    """The text of an HTML page's body as it reads: no head, scripts, styles or <pre> (code
    and command listings, not prose), and a line break at every block element."""

    SKIP = frozenset({"head", "script", "style", "pre"})
    BLOCK = frozenset({"p", "div", "br", "li", "dt", "dd", "tr", "table", "ul", "ol", "dl", "blockquote", "section",
                       "h1", "h2", "h3", "h4", "h5", "h6", "title"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(self.skipping - 1, 0)
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def read_html(path: Path) -> str:
    parser = _Text()
    parser.feed(read_text(path))
    parser.close()
    return "".join(parser.parts)


def r_character_vectors(data: bytes) -> Iterator[list[str]]:
    """Each plain character vector (no attributes) in an R lazy-load database (.rdb): a run of
    zlib blobs, each a 4-byte length then an object in R's XDR serialization (versions 2 and
    3). Other objects are passed over; an NA string reads as an empty line."""
    rest = data
    while rest:
        blob = zlib.decompressobj()
        raw = blob.decompress(rest[4:])
        rest = blob.unused_data
        if raw[:2] != b"X\n":
            continue
        version, = struct.unpack(">i", raw[2:6])
        at = 14
        if version == 3:  # the writer's native encoding: a length, then its name
            at += 4 + struct.unpack(">i", raw[at:at + 4])[0]
        flags, length = struct.unpack(">ii", raw[at:at + 8])
        if flags != 16:  # STRSXP, no attributes, no object bit
            continue
        at += 8
        strings = []
        for _ in range(length):
            n, = struct.unpack(">i", raw[at + 4:at + 8])
            at += 8
            strings.append(raw[at:at + n].decode("utf-8") if n >= 0 else "")
            at += max(n, 0)
        yield strings


def read_r_books(titles: tuple[str, ...], path: Path) -> str:
    """The books of an R data package (one character vector of lines each) whose first line is
    one of `titles` (any case), in the order of `titles`."""
    books = {lines[0].strip().lower(): "\n".join(lines) for lines in r_character_vectors(path.read_bytes()) if lines}
    missing = [t for t in titles if t.lower() not in books]
    if missing:
        raise SystemExit(f"{path}: no book titled {', '.join(missing)} (it has: {', '.join(sorted(books))})")
    return "\n\n".join(books[t.lower()] for t in titles)


# --- the one rule ----------------------------------------------------------------------
# Typographic quotes and dashes, which NFKD keeps, written as ASCII would write them.
ASCII_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"',
                                   "\u201d": '"', "\u201e": '"', "\u2013": "-", "\u2014": "--", "\u2212": "-"})


def normalise(text: str) -> str:
    """Printable ASCII and newlines, as plain prose is written, the same for every held-out
    corpus: typographic quotes and dashes as ASCII ones (ASCII_PUNCTUATION), then NFKD (an
    accented letter is its letter and a mark; a non-breaking space a space), then every
    character that is not printable ASCII, a tab or a newline dropped (marks, box drawing,
    symbols, backspace overstrikes); each line stripped with its runs of spaces and tabs made
    one space, runs of blank lines made one. The character tokenizer takes every distinct
    character, so this keeps a corpus's vocabulary (and shakespeare-char's bigram table) under
    100 characters, near Tiny Shakespeare's 65, and makes a byte a character, as `val_bpb` per
    character assumes."""
    text = unicodedata.normalize("NFKD", text.translate(ASCII_PUNCTUATION))
    text = "".join(c for c in text if " " <= c <= "~" or c in "\t\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def extract(corpus: Corpus, root: Path) -> str:
    """The corpus's text from its unpacked package at `root`: every member, read, joined by a
    blank line, normalised."""
    paths = sorted({p for pattern in corpus.members for p in root.glob(pattern) if p.is_file()
                    and not any(fnmatch.fnmatch(p.name, name) for name in corpus.exclude)})
    if not paths:
        raise SystemExit(f"corpus {corpus.name}: {corpus.package}={corpus.version} has no file matching "
                         f"{', '.join(corpus.members)}")
    return normalise("\n\n".join(corpus.read(p) for p in paths))


# --- the corpora -------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    name: str
    package: str
    version: str  # pinned: the text is rebuilt from exactly this package
    members: tuple[str, ...]  # globs inside the unpacked package
    read: Callable[[Path], str]
    what: str
    sha256: str  # of the extracted text as made when pinned; another is reported, not hidden
    exclude: tuple[str, ...] = ()  # globs of member names left out


CORPORA = {c.name: c for c in [
    Corpus("austen", "r-cran-janeaustenr", "1.0.0-1", ("usr/lib/R/site-library/janeaustenr/data/Rdata.rdb",),
           functools.partial(read_r_books, ("Pride and Prejudice", "Persuasion")),
           "two of Jane Austen's novels, Pride and Prejudice then Persuasion (Project Gutenberg's text): "
           "literary narrative and dialogue, two centuries after Shakespeare",
           "dfac8d05a13a3605189831241a31f07bc3f4f75d3754e8dbae989e1c02d88119"),
    Corpus("jargon", "jargon-text", "4.4.7-4.1", ("usr/share/doc/jargon-text/jargon.txt.gz",), read_text,
           "the Jargon File 4.4.7: a glossary of hacker slang whose entries are short essays, after "
           "chapters on hacker culture and writing style",
           "5d7edd566c3fd87b00186ada50a4a16850674dc23171c71a5a8169e6252eae2e"),
    Corpus("fortunes", "fortunes", "1:1.99.1-7.3", ("usr/share/games/fortunes/*",), read_fortunes,
           "fortune-mod's quotations and anecdotes (art, people, wisdom, songs and poems, love, law, "
           "science, work, computers), every file but ascii-art, which is drawings",
           "806cf10484cc4e9718ca658d2a466c903666e83e41273fee4f7cf9ac0f457484",
           exclude=("*.*", "ascii-art")),  # *.dat are indexes, *.u8 links to the text
    Corpus("handbook", "debian-handbook", "11.20220922", ("usr/share/doc/debian-handbook/html/en-US/*.html",),
           read_html, "The Debian Administrator's Handbook for Debian 11 (English HTML) without its <pre> "
           "listings: technical prose on how and why a system is run",
           "b995ea2e0a4030ae234798190277520412c71fa2e2aa2b7a7b71f446d81be7e3"),
]}


# --- fetching ------------------------------------------------------------------------------
def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"the held-out corpora need {name}, as a Debian-family system has it (apt-get is not "
                         "needed for a .deb already in the cache's debs/ folder)")
    return path


def fetch(corpus: Corpus, cache: Path) -> Path:
    """The corpus's pinned .deb, downloaded into `cache`/debs once."""
    deb = cache / "debs" / f"{corpus.package}={corpus.version}.deb"
    if deb.exists():
        return deb
    deb.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=deb.parent) as tmp:
        r = subprocess.run([tool("apt-get"), "download", f"{corpus.package}={corpus.version}"], cwd=tmp,
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            said = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"corpus {corpus.name}: apt-get download {corpus.package}={corpus.version} failed "
                             f"({said}); the pinned version stays on https://snapshot.debian.org/package/"
                             f"{corpus.package}/{corpus.version.split(':')[-1]}/ : save its .deb as {deb}")
        downloaded, = Path(tmp).glob("*.deb")
        downloaded.replace(deb)
    return deb


def prepare(corpus: Corpus, cache: Path = CACHE) -> dict:
    """The corpus extracted afresh from its .deb to `cache`/NAME.txt: its path, package, version,
    what it is, chars, distinct chars and sha256 (and the pinned one where they differ)."""
    deb = fetch(corpus, cache)
    with tempfile.TemporaryDirectory() as root:
        subprocess.run([tool("dpkg-deb"), "-x", str(deb), root], check=True)
        text = extract(corpus, Path(root))
    path = cache / f"{corpus.name}.txt"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    found = {"name": corpus.name, "package": corpus.package, "version": corpus.version, "what": corpus.what,
             "path": str(path), **facts(text)}
    if found["sha256"] != corpus.sha256:
        found["pinned_sha256"] = corpus.sha256
        print(f"warning: corpus {corpus.name}'s text has sha256 {found['sha256'][:12]}, not the pinned "
              f"{corpus.sha256[:12]} (another extraction rule or Python); its figures compare with its own only",
              flush=True)
    return found


def facts(text: str) -> dict:
    """What identifies a text, and its size to a character tokenizer."""
    return {"chars": len(text), "distinct_chars": len(set(text)),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
