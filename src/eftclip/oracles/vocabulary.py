"""Map free-text prompts onto an oracle's own class names.

A closed-vocabulary oracle (a COCO detector, a region classifier) knows a fixed
list of class names; CLIP's prompts are free text.  :class:`VocabularyMapper`
maps a prompt to one class name, in this order:

1. the same name, ignoring case, spaces, hyphens and underscores
   ("Traffic-light" -> "traffic light", "potted plant" -> "pottedplant");
2. the singular of a plural ("dogs" -> "dog");
3. the shipped synonym groups (``data/synonyms.txt``: "couch" -> "sofa");
4. WordNet (through nltk): a lemma of one of the prompt's noun senses, or of one
   of their hypernyms up to ``max_depth`` steps up ("automobile" -> "car",
   "poodle" -> "dog").  Only *more general* names are reached, never more
   specific ones, so "banana split" (a dessert) does not become "banana".

A prompt none of these map is *unknown*: the oracle reports it, never drops it.

WordNet comes from nltk's own data when present, else from Debian's
``wordnet-base`` + ``wordnet-sense-index`` laid out as nltk's ``corpora/wordnet``
by :func:`nltk_wordnet_from_debian` (nothing is downloaded); without either, the
mapper warns once and uses the synonym table alone.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Sequence

from eftclip.errors import EftclipError, MissingExtraError
from eftclip.io import atomic_path, write_text

# WordNet 3.0 lexicographer files, in the order their numbers appear in the data files
# (lexnames(5WN)); Debian's packages lack the ``lexnames`` file nltk's reader opens.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}

# Files nltk's WordNetCorpusReader opens, all present in Debian's two packages but lexnames.
_WORDNET_FILES = (
    "cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")


def normalize(name: str) -> str:
    """Lower case, words separated by single spaces ("Traffic_Light " -> "traffic light")."""
    return " ".join(re.sub(r"[_\-/]+", " ", name.strip().lower()).split())


def _key(name: str) -> str:
    # darknet's names glue words together ("pottedplant", "tvmonitor")
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def _singulars(word: str) -> list[str]:
    out = []
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        out.append(word[:-1])
    return out


# ----------------------------------------------------------------------------- synonym table


@functools.lru_cache(maxsize=None)
def shipped_synonyms() -> tuple[tuple[str, ...], ...]:
    """The shipped synonym groups (``eftclip/oracles/data/synonyms.txt``), normalised."""
    text = resources.files("eftclip.oracles").joinpath("data/synonyms.txt").read_text("utf-8")
    return tuple(_parse_synonyms(text.splitlines(), "eftclip/oracles/data/synonyms.txt"))


def read_synonyms(path: str | os.PathLike) -> list[tuple[str, ...]]:
    """Read a synonym file: one comma-separated group per line, ``#`` comments."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise EftclipError(f"{path}: synonym file not found") from exc
    return _parse_synonyms(lines, str(path))


def _parse_synonyms(lines: Sequence[str], where: str) -> list[tuple[str, ...]]:
    groups = []
    for i, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        names = tuple(n for n in (normalize(x) for x in line.split(",")) if n)
        if len(names) < 1:
            raise EftclipError(f"{where}: line {i} holds no names")
        groups.append(names)
    return groups


# ----------------------------------------------------------------------------- WordNet


def nltk_wordnet_from_debian(dest: str | os.PathLike, source: str | os.PathLike = DEBIAN_WORDNET_DIR) -> Path:
    """Lay Debian's WordNet 3.0 out as nltk's ``corpora/wordnet`` under ``dest``.

    ``source`` holds the files of the ``wordnet-base`` and ``wordnet-sense-index``
    packages (``apt-get install wordnet-base wordnet-sense-index``).  Files are
    copied into ``dest/corpora/wordnet`` and the
    ``lexnames`` file nltk needs is written (a 36 MB copy).  Returns that corpus folder, which
    ``nltk.corpus.reader.wordnet.WordNetCorpusReader(folder, None)`` reads, and
    which nltk itself finds with ``nltk.data.path.append(dest)``.
    """
    source = Path(source)
    missing = [f for f in _WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise EftclipError(
            f"{source}: not a WordNet 3.0 folder (missing {', '.join(missing)}); "
            "install Debian's wordnet-base and wordnet-sense-index"
        )
    corpus = Path(dest) / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in _WORDNET_FILES:
        target = corpus / name
        if target.is_symlink() or (target.is_file() and target.stat().st_nlink > 1):
            target.unlink()
        elif target.is_file() and target.stat().st_size == (source / name).stat().st_size:
            continue
        # plain copies: nltk refuses symlinks and hard links that lead outside its data roots
        with atomic_path(target) as tmp:
            shutil.copyfile(source / name, tmp)
    lexnames = "".join(
        f"{i:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
    )
    write_text(corpus / "lexnames", lexnames)
    return corpus


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eftclip" / "nltk_data"


@functools.lru_cache(maxsize=8)
def load_wordnet(root: str | None = None):
    """An nltk WordNet reader, or None when nltk or the WordNet data is absent.

    Looks in ``root`` (an nltk ``corpora/wordnet`` folder or a Debian-style
    folder), then ``$EFTCLIP_WORDNET_DIR``, then nltk's data path, then Debian's
    ``/usr/share/wordnet`` (laid out once under ``~/.cache/eftclip/nltk_data``).
    Never downloads.  Raises MissingExtraError only when ``root`` is given and
    nltk is not installed.
    """
    try:
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        if root is not None:
            raise MissingExtraError("WordNet prompt mapping", "wordnet", "nltk") from None
        return None

    def read(folder: Path):
        if (folder / "lexnames").is_file():
            import nltk.data

            # nltk only opens corpus files under its data roots
            data_root = folder.parent.parent if folder.parent.name == "corpora" else folder
            if str(data_root) not in [str(p) for p in nltk.data.path]:
                nltk.data.path.append(str(data_root))
            with warnings.catch_warnings():
                # the multilingual (OMW) part is not needed to walk hypernyms
                warnings.simplefilter("ignore")
                return WordNetCorpusReader(str(folder), None)
        if (folder / "data.noun").is_file():
            return read(nltk_wordnet_from_debian(_cache_dir(), folder))
        return None

    candidates = [root, os.environ.get("EFTCLIP_WORDNET_DIR")]
    for cand in candidates:
        if cand:
            wn = read(Path(cand)) or read(Path(cand) / "corpora" / "wordnet")
            if wn is None and cand == root:
                raise EftclipError(f"{root}: no WordNet data found there (need data.noun, index.noun, ...)")
            if wn is not None:
                return wn
    try:
        import nltk.data

        found = nltk.data.find("corpora/wordnet")
        folder = Path(str(found))
        if folder.is_dir():
            wn = read(folder)
            if wn is not None:
                return wn
    except (LookupError, OSError):
        pass
    if (DEBIAN_WORDNET_DIR / "data.noun").is_file():
        try:
            return read(DEBIAN_WORDNET_DIR)
        except (OSError, ValueError, EftclipError):
            return None
    cached = _cache_dir() / "corpora" / "wordnet"
    if (cached / "lexnames").is_file():
        try:
            return read(cached)
        except (OSError, ValueError):
            return None
    return None


_warned_no_wordnet = False


def _warn_no_wordnet() -> None:
    global _warned_no_wordnet
    if not _warned_no_wordnet:
        _warned_no_wordnet = True
        warnings.warn(
            "WordNet is not available (pip install 'eftclip[wordnet]' and "
            "apt-get install wordnet-base wordnet-sense-index); mapping prompts "
            "onto oracle classes with the shipped synonym table only",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- the mapper


def _sense_count(synset, name: str) -> int:
    want = name.replace(" ", "_")
    total = 0
    for lemma in synset.lemmas():
        if lemma.name().lower() == want:
            try:
                total += lemma.count()
            except Exception:  # cntlist absent: no frequency information
                return 1
    return total


class VocabularyMapper:
    """Map prompts onto a fixed list of class names (see the module docstring).

    ``classnames``: the oracle's vocabulary, in its own spelling.
    ``wordnet``: ``"auto"`` (use it when available, else warn once and use the
    table), ``True`` (required: MissingExtraError/EftclipError when absent),
    ``False`` (table only), or an nltk WordNet reader.
    ``synonyms``: synonym groups replacing the shipped table (see :func:`read_synonyms`).
    ``max_depth``: how many hypernym steps a prompt may climb to reach a class.
    """

    def __init__(
        self,
        classnames: Sequence[str],
        *,
        wordnet: bool | str | object = "auto",
        synonyms: Sequence[Sequence[str]] | None = None,
        max_depth: int = 6,
    ):
        self.classnames = list(classnames)
        if not self.classnames:
            raise EftclipError("vocabulary mapping needs at least one class name")
        self.max_depth = int(max_depth)
        self._by_key: dict[str, str] = {}
        for name in self.classnames:
            self._by_key.setdefault(_key(name), name)
        groups = shipped_synonyms() if synonyms is None else [tuple(normalize(n) for n in g) for g in synonyms]
        self._groups = [g for g in groups if g]
        if wordnet is True:
            self._wn = load_wordnet()
            if self._wn is None:
                try:
                    import nltk  # noqa: F401
                except ImportError:
                    raise MissingExtraError("WordNet prompt mapping", "wordnet", "nltk") from None
                raise EftclipError(
                    "WordNet data not found: install Debian's wordnet-base and wordnet-sense-index, "
                    "or set EFTCLIP_WORDNET_DIR to an nltk corpora/wordnet folder"
                )
        elif wordnet is False or wordnet is None:
            self._wn = None
        elif wordnet == "auto":
            self._wn = load_wordnet()
            if self._wn is None:
                _warn_no_wordnet()
        else:
            self._wn = wordnet
        self._cache: dict[str, str | None] = {}

    @property
    def uses_wordnet(self) -> bool:
        return self._wn is not None

    def __call__(self, prompt: str) -> str | None:
        return self.map(prompt)

    def map(self, prompt: str) -> str | None:
        """The class name ``prompt`` maps to, or None when it is unknown to this vocabulary."""
        if prompt not in self._cache:
            self._cache[prompt] = self._map(prompt)
        return self._cache[prompt]

    def map_all(self, prompts: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """``({prompt: classname} for the mapped ones, [unknown prompts])``, order kept."""
        mapped, unknown = {}, []
        for p in prompts:
            c = self.map(p)
            if c is None:
                unknown.append(p)
            else:
                mapped[p] = c
        return mapped, unknown

    # -- steps

    def _map(self, prompt: str) -> str | None:
        name = normalize(prompt)
        if not name:
            return None
        forms = [name] + [" ".join(name.split()[:-1] + [s]) for s in _singulars(name.split()[-1])]
        for form in forms:
            hit = self._by_key.get(_key(form))
            if hit is not None:
                return hit
        for form in forms:
            hit = self._from_synonyms(form)
            if hit is not None:
                return hit
        if self._wn is not None:
            return self._from_wordnet(name)
        return None

    def _from_synonyms(self, name: str) -> str | None:
        k = _key(name)
        for group in self._groups:
            if k in {_key(n) for n in group}:
                for member in group:
                    hit = self._by_key.get(_key(member))
                    if hit is not None:
                        return hit
        return None

    def _lookup_lemma(self, lemma: str) -> str | None:
        form = normalize(lemma)
        return self._by_key.get(_key(form)) or self._from_synonyms(form)

    def _from_wordnet(self, name: str) -> str | None:
        wn = self._wn
        try:
            senses = wn.synsets(name.replace(" ", "_"), pos="n")
        except Exception:  # a malformed lemma inside nltk; treat as not in WordNet
            return None
        # Rare senses turn common words into people ("tree": Sir Herbert Tree, "frog": a
        # Frenchman), so only senses seen in WordNet's tagged corpus count, most frequent
        # first; unseen ones are tried only when no sense was ever seen, and proper
        # names (instances) never are.  Each sense climbs its own hypernyms before the
        # next sense is tried.
        senses = [s for s in senses if not s.instance_hypernyms()]
        counted = [(_sense_count(s, name), i, s) for i, s in enumerate(senses)]
        seen_senses = [c for c in counted if c[0] > 0]
        if seen_senses:
            ordered = [s for _, _, s in sorted(seen_senses, key=lambda c: (-c[0], c[1]))]
        else:
            # never seen in the corpus: figurative person senses ("ostrich": one who hides
            # from reality, "dalmatian": a native of Dalmatia) go after the literal ones
            ordered = sorted(senses, key=lambda s: s.lexname() == "noun.person")
        for sense in ordered:
            frontier, seen = [sense], {sense}
            for _depth in range(self.max_depth + 1):
                for syn in frontier:
                    for lemma in syn.lemma_names():
                        hit = self._lookup_lemma(lemma)
                        if hit is not None:
                            return hit
                nxt = []
                for syn in frontier:
                    for h in syn.hypernyms():
                        if h not in seen:
                            seen.add(h)
                            nxt.append(h)
                if not nxt:
                    break
                frontier = nxt
        return None
