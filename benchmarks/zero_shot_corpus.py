"""A labelled corpus of real text for the ``zero-shot`` classifier, rebuilt from installed Debian packages.

Every document's label follows from where it comes from (a fortune file's topic, a dictionary's subject field, a
WordNet topic domain, a computing dictionary), never from reading it. The maps from those topics to the 26 domain
labels follow Google's content categories, which the labels come from (e.g. religion -> People_and_Society,
card games -> Games); topics that fit two labels (ships, zoology, psychology, networking) are left out.

Sources are split, whole, into a **tuning** split (fortunes' topic files and GCIDE without its WordNet-derived
entries: the label descriptions and calibration may be chosen by looking at them) and a **held-out** split
(WordNet's topic domains, FOLDOC, the Jargon File, the elements dictionary, Debian hints and the Debian Reference:
only measured).

Selection is deterministic: within each (source, label) the candidates are ordered by a hash of their id and the
first ``cap`` kept, so the same package versions give the same corpus; ``benchmarks/zero_shot/manifest.json``
records the ids and a hash of each text, so a drift in the packages is reported, not silently measured.

    apt-get install fortunes fortunes-min fortunes-debian-hints dict-gcide dict-foldoc dict-jargon \\
        dict-elements wordnet-base debian-reference-en
"""

from __future__ import annotations

import gzip
import hashlib
import html
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

log = logging.getLogger("benchmarks.zero_shot_corpus")

FORTUNES = Path("/usr/share/games/fortunes")
DICTD = Path("/usr/share/dictd")
WORDNET = Path("/usr/share/wordnet")
DEBIAN_REFERENCE = Path("/usr/share/doc/debian-reference-en/docs")

# Debian package -> a file it installs (checked before building, so a missing package is named, not guessed).
PACKAGES: dict[str, Path] = {
    "fortunes": FORTUNES / "science",
    "fortunes-min": FORTUNES / "fortunes",
    "fortunes-debian-hints": FORTUNES / "debian-hints",
    "dict-gcide": DICTD / "gcide.index",
    "dict-foldoc": DICTD / "foldoc.index",
    "dict-jargon": DICTD / "jargon.index",
    "dict-elements": DICTD / "elements.index",
    "wordnet-base": WORDNET / "data.noun",
    "debian-reference-en": DEBIAN_REFERENCE / "ch01.en.html",
}

MIN_CHARS = 40
MAX_CHARS = 2000

# fortune file -> label (files of mixed or unclear topic, e.g. "kids", "songs-poems", "people", are not used).
FORTUNE_FILES: dict[str, str] = {
    "art": "Arts_and_Entertainment", "startrek": "Arts_and_Entertainment",
    "computers": "Computers_and_Electronics", "linux": "Computers_and_Electronics", "perl": "Computers_and_Electronics",
    "education": "Jobs_and_Education", "work": "Jobs_and_Education",
    "food": "Food_and_Drink", "law": "Law_and_Government", "politics": "Law_and_Government",
    "literature": "Books_and_Literature", "medicine": "Health", "pets": "Pets_and_Animals", "science": "Science",
    "sports": "Sports", "news": "News", "love": "People_and_Society", "men-women": "People_and_Society",
    "drugs": "Sensitive_Subjects",
}

# GCIDE subject field (as printed in the entry) -> label; Webster 1913 senses and later additions (no WordNet ones,
# which would overlap the held-out WordNet source).
GCIDE_FIELDS: dict[str, str] = {
    "Med.": "Health", "Surg.": "Health", "Pharm.": "Health", "Dentistry": "Health",
    "Mus.": "Arts_and_Entertainment", "Paint.": "Arts_and_Entertainment", "Photog.": "Arts_and_Entertainment",
    "Theat.": "Arts_and_Entertainment", "Drama": "Arts_and_Entertainment", "Dancing": "Arts_and_Entertainment",
    "Law": "Law_and_Government", "Mil.": "Law_and_Government", "Fort.": "Law_and_Government",
    "Chem.": "Science", "Math.": "Science", "Astron.": "Science", "Geol.": "Science", "Physics.": "Science",
    "Geom.": "Science", "Alg.": "Science", "Opt.": "Science", "Crystallog.": "Science",
    "Eccl.": "People_and_Society", "Theol.": "People_and_Society", "Script.": "People_and_Society",
    "Com.": "Business_and_Industrial", "Agric.": "Business_and_Industrial", "Manuf.": "Business_and_Industrial",
    "Mining.": "Business_and_Industrial", "Print.": "Business_and_Industrial", "Brewing": "Business_and_Industrial",
    "Hort.": "Home_and_Garden", "Gardening": "Home_and_Garden",
    "Computers": "Computers_and_Electronics", "Cookery": "Food_and_Drink", "Cooking": "Food_and_Drink",
    "Baseball": "Sports", "Golf": "Sports", "Football": "Sports", "Cricket": "Sports", "Sports": "Sports",
    "Horse Racing": "Sports", "Racing": "Sports",
    "Card Playing": "Games", "Chess": "Games", "Billiards": "Games", "Games": "Games",
    "Finance": "Finance", "Stock Exchange": "Finance", "Banking": "Finance", "Bookkeeping": "Finance",
    "Railroad": "Travel_and_Transportation", "Railways": "Travel_and_Transportation",
    "Aeronautics": "Travel_and_Transportation",
    "Falconry": "Hobbies_and_Leisure", "Hunting": "Hobbies_and_Leisure", "Angling": "Hobbies_and_Leisure",
    "Fishing": "Hobbies_and_Leisure",
    "Teleg.": "Internet_and_Telecom", "Telephony": "Internet_and_Telecom", "Automobiles": "Autos_and_Vehicles",
}

# WordNet topic domain (the synset a ";c" pointer names) -> label.
_WORDNET_DOMAINS: dict[str, str] = {
    "Law_and_Government": "law military government politics criminal_law contract legislation legislature "
                          "election Roman_law civil_law navy",
    "Arts_and_Entertainment": "music art photography performing_arts dramaturgy dancing fine_arts television "
                              "drama ballet movie singing dance recording",
    "Science": "chemistry biology physics botany mathematics statistics genetics geology astronomy physiology "
               "meteorology geometry biochemistry arithmetic optics cosmology ecology physical_chemistry "
               "microbiology particle_physics crystallography thermodynamics mineralogy acoustics science",
    "Computers_and_Electronics": "computer_science electronics computer programming",
    "Sports": "baseball sport golf football American_football basketball boxing tennis cricket soccer ice_hockey "
              "badminton fencing rugby softball squash water_sport auto_racing field_hockey gymnastics "
              "horse_racing bowling court_game",
    "Health": "medicine anatomy pathology psychiatry surgery dentistry obstetrics immunology ophthalmology "
              "pregnancy pharmacology neurology otology radiology",
    "Food_and_Drink": "cooking",
    "People_and_Society": "religion Roman_Catholic Judaism Islam Hinduism Christianity theology Buddhism Sikhism "
                          "Anglican_Church Christian_theology church_service",
    "Finance": "finance investing stock_exchange accounting tax",
    "Business_and_Industrial": "commerce commercial_enterprise corporation industry mining metallurgy "
                               "construction farming animal_husbandry printing factory",
    "Travel_and_Transportation": "air_travel aeronautics aircraft airplane navigation train",
    "Autos_and_Vehicles": "driving car motor_vehicle",
    "Books_and_Literature": "poetry literature writing prosody",
    "Games": "card_game chess bridge game poker checkers billiards",
    "Hobbies_and_Leisure": "handicraft hunt falconry",
    "Home_and_Garden": "furniture gardening",
    "Pets_and_Animals": "animal mammal vertebrate",
    "Sensitive_Subjects": "terrorism war narcotic",
    "Internet_and_Telecom": "telecommunication telephone",
    "Jobs_and_Education": "education",
    "Beauty_and_Fitness": "fashion",
}
WORDNET_DOMAINS: dict[str, str] = {d: label for label, names in _WORDNET_DOMAINS.items() for d in names.split()}

# Debian Reference chapters about the system and programs (networking chapters 5-6 left out: they fit two labels).
DEBIAN_REFERENCE_CHAPTERS = ("ch01", "ch02", "ch03", "ch04", "ch07", "ch08", "ch09", "ch10", "ch11", "ch12")


@dataclass(frozen=True)
class Doc:
    """One document: ``id`` is stable across rebuilds (source + key in that source)."""

    id: str
    source: str
    split: str
    label: str
    text: str

    def digest(self) -> str:
        return hashlib.sha1(self.text.encode("utf-8")).hexdigest()[:12]

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """A source: its split, the Debian package it reads, how many documents a label keeps, and its reader."""

    name: str
    split: str
    package: str
    cap: int
    read: Callable[[], Iterable[tuple[str, str, str]]]  # (key, label, text)


class MissingPackages(RuntimeError):
    """The corpus needs Debian packages that are not installed."""


def missing_packages() -> list[str]:
    """The packages of ``PACKAGES`` whose marker file is absent on this machine."""
    return [name for name, marker in PACKAGES.items() if not marker.exists()]


def clean(text: str) -> str:
    """Whitespace collapsed and the text cut at ``MAX_CHARS`` (the classifier's own default cut)."""
    return re.sub(r"\s+", " ", text).strip()[:MAX_CHARS]


# ----------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------

def read_fortunes(files: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """Fortune cookies (``%``-separated) of each topic file."""
    for name, label in files.items():
        raw = (FORTUNES / name).read_text(encoding="utf-8", errors="replace")
        for i, cookie in enumerate(re.split(r"\n%\n", raw)):
            yield f"{name}/{i}", label, cookie


def dictd_entries(name: str) -> Iterator[tuple[str, str, str]]:
    """(offset, headword, entry text) of each entry of a dictd database, through its index (base64 offsets and
    lengths); an entry that several headwords index is read once."""
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s: str) -> int:
        n = 0
        for ch in s:
            n = n * 64 + digits.index(ch)
        return n

    data = gzip.open(DICTD / f"{name}.dict.dz").read()
    seen: set[int] = set()
    for line in (DICTD / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        head, off, length = line.split("\t")[:3]
        start = b64(off)
        if head.startswith("00-database") or head.startswith("00database") or start in seen:
            continue
        seen.add(start)
        yield str(start), head, data[start: start + b64(length)].decode("utf-8", errors="replace")


def strip_dict_markup(text: str) -> str:
    """Cross-reference braces, pronunciation backslashes, Webster citations and trailing FOLDOC dates removed."""
    text = re.sub(r"\\[^\\\n]*\\", "", text)
    text = re.sub(r"\[(1913 Webster|PJC|Webster 1913 Suppl\.|Century Dict\.)[^\]]*\]", "", text)
    text = re.sub(r"\(\d{4}-\d{2}-\d{2}\)\s*$", "", text.strip())
    return text.replace("{", "").replace("}", "")


def read_gcide() -> Iterator[tuple[str, str, str]]:
    """GCIDE senses carrying a mapped subject field, from entries not derived from WordNet: the line the field tag is on
    (which may name a phrase before the tag) up to the next sub-sense or field tag."""
    fields = "|".join(re.escape(f) for f in GCIDE_FIELDS)
    tag = re.compile(rf"\((?:{fields})\)")
    stop = re.compile(r"\((?:[a-z]|[A-Z][A-Za-z. ]+)\)|\n\s*\n|\n\s*\d+\. ")
    for off, _, entry in dictd_entries("gcide"):
        if "WordNet" in entry:
            continue
        head = re.split(r"\s*\\", entry.strip().split("\n", 1)[0], maxsplit=1)[0].strip()
        for m in tag.finditer(entry):
            line_start = entry.rfind("\n", 0, m.start()) + 1
            end = stop.search(entry, m.end())
            before = re.sub(r"^\s*(\d+\.\s*)?", "", entry[line_start: m.start()])
            if line_start == 0:
                before = ""  # the headword line: the head is named below anyway
            sense = strip_dict_markup(before + entry[m.end(): end.start() if end else len(entry)])
            sense = re.sub(r"^[\s,.;]+", "", sense)
            yield f"{off}/{m.start()}", GCIDE_FIELDS[m.group(0)[1:-1]], f"{head}: {sense}"


def read_dictd(name: str, label: str, min_body: int = 150) -> Callable[[], Iterator[tuple[str, str, str]]]:
    """Every entry of a one-topic dictd database (FOLDOC, Jargon File, elements), all under ``label``."""

    def read() -> Iterator[tuple[str, str, str]]:
        for _, head, entry in dictd_entries(name):
            body = strip_dict_markup(entry.split("\n", 1)[-1])
            if len(body.strip()) >= min_body:
                yield head, label, f"{head}: {body}"

    return read


def wordnet_synsets(pos: str) -> Iterator[tuple[str, list[str], list[tuple[str, str, str]], str]]:
    """(offset, lemmas, pointers (symbol, offset, pos), gloss) of each synset in ``data.<pos>``."""
    for line in (WORDNET / f"data.{pos}").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        fields_part, _, gloss = line.partition(" | ")
        f = fields_part.split()
        n_words = int(f[3], 16)
        words = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        rest = f[4 + 2 * n_words:]
        ptrs = [(rest[1 + 4 * i], rest[2 + 4 * i], rest[3 + 4 * i]) for i in range(int(rest[0]))]
        yield f[0], words, ptrs, gloss.strip()


def read_wordnet() -> Iterator[tuple[str, str, str]]:
    """Synsets (any part of speech) whose topic domain (``;c``) maps to a label: ``lemmas: gloss``."""
    noun_names = {off: words[0].replace(" ", "_") for off, words, _, _ in wordnet_synsets("noun")}
    for pos in ("noun", "verb", "adj", "adv"):
        for off, words, ptrs, gloss in wordnet_synsets(pos):
            labels = {WORDNET_DOMAINS.get(noun_names.get(o, "")) for sym, o, p in ptrs if sym == ";c" and p == "n"}
            labels.discard(None)
            if len(labels) == 1:
                gloss = re.sub(r"^\([^)]*\)\s*", "", gloss)  # a leading "(baseball)"-style field tag
                yield f"{pos}/{off}", labels.pop(), f"{', '.join(words)}: {gloss}"


class _Paragraphs(HTMLParser):
    """Text of the ``<p>`` elements of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.current: list[str] = []
        self.paragraphs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "p":
            self.depth += 1

    def handle_endtag(self, tag) -> None:
        if tag == "p" and self.depth:
            self.depth -= 1
            if not self.depth:
                self.paragraphs.append("".join(self.current))
                self.current = []

    def handle_data(self, data) -> None:
        if self.depth:
            self.current.append(data)


def read_debian_reference() -> Iterator[tuple[str, str, str]]:
    """Paragraphs of the Debian Reference's chapters on the system and its programs."""
    for chapter in DEBIAN_REFERENCE_CHAPTERS:
        parser = _Paragraphs()
        parser.feed(html.unescape((DEBIAN_REFERENCE / f"{chapter}.en.html").read_text(encoding="utf-8")))
        for i, para in enumerate(parser.paragraphs):
            if len(para.strip()) >= 200:
                yield f"{chapter}/{i}", "Computers_and_Electronics", para


def read_debian_hints() -> Iterator[tuple[str, str, str]]:
    yield from read_fortunes({"debian-hints": "Computers_and_Electronics"})


SOURCES: list[Source] = [
    Source("fortunes", "tuning", "fortunes", 40, lambda: read_fortunes(FORTUNE_FILES)),
    Source("gcide", "tuning", "dict-gcide", 30, read_gcide),
    Source("wordnet", "held-out", "wordnet-base", 40, read_wordnet),
    Source("foldoc", "held-out", "dict-foldoc", 20, read_dictd("foldoc", "Computers_and_Electronics")),
    Source("jargon", "held-out", "dict-jargon", 20, read_dictd("jargon", "Computers_and_Electronics")),
    Source("elements", "held-out", "dict-elements", 20, read_dictd("elements", "Science", min_body=100)),
    Source("debian-hints", "held-out", "fortunes-debian-hints", 20, read_debian_hints),
    Source("debian-reference", "held-out", "debian-reference-en", 20, read_debian_reference),
]


def _rank(doc_id: str) -> str:
    return hashlib.sha1(doc_id.encode("utf-8")).hexdigest()


def select(source: Source, items: Iterable[tuple[str, str, str]]) -> list[Doc]:
    """The first ``cap`` documents of each label in hash order; texts shorter than ``MIN_CHARS`` or repeated
    are skipped."""
    by_label: dict[str, dict[str, str]] = {}
    for key, label, text in items:
        text = clean(text)
        if len(text) >= MIN_CHARS:
            by_label.setdefault(label, {})[f"{source.name}:{key}"] = text
    docs: list[Doc] = []
    seen: set[str] = set()
    for label in sorted(by_label):
        kept = 0
        for doc_id in sorted(by_label[label], key=_rank):
            text = by_label[label][doc_id]
            if kept == source.cap:
                break
            if text in seen:
                continue
            seen.add(text)
            docs.append(Doc(doc_id, source.name, source.split, label, text))
            kept += 1
    return docs


def build_corpus(sources: Iterable[Source] = SOURCES) -> list[Doc]:
    """Every source's documents; raises ``MissingPackages`` naming what to install."""
    sources = list(sources)
    missing = sorted({s.package for s in sources} & set(missing_packages()))
    if missing:
        raise MissingPackages(
            "the zero-shot corpus is built from Debian packages that are not installed: "
            f"{' '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    docs: list[Doc] = []
    for source in sources:
        picked = select(source, source.read())
        log.info("%s (%s): %d documents", source.name, source.split, len(picked))
        docs.extend(picked)
    return docs
