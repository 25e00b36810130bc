"""What a typed model name means: its family, width, groups and variant, for suggestions by meaning.

Users type the names other libraries taught them — torchvision's ``mnasnet0_75``, timm's
``mobilenetv2_050``. When such a name is no zoo model nor an alias of one, the useful answer is
the models of the same family nearest in width (and groups, resolution, variant), not the names
that happen to share the most letters: a plain edit distance answers ``shufflenet_v2_x1_0`` with
``shufflenet_v2_x2_0``. Edit distance remains the fallback for names of no known family.
A leaf module: it imports nothing of the zoo.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# How each family's names begin, in the zoo's spelling, torchvision's and timm's. Order matters:
# the more specific pattern first (mobilenet_v2 before the v1 that a bare "mobilenet" means).
_FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"shufflenet_?v2", "shufflenet_v2"),
    (r"shufflenet(?:_?v1)?(?!_?v\d)", "shufflenet_v1"),
    (r"mobilenet_?v3", "mobilenet_v3"),
    (r"mobilenet_?v2", "mobilenet_v2"),
    (r"mobilenet(?:_?v1)?(?!_?v\d)", "mobilenet_v1"),
    (r"semnasnet", "mnasnet"),  # timm: MNASNet-A1, with squeeze-excite
    (r"mnasnet", "mnasnet"),
    (r"squeezenet", "squeezenet"),
    (r"(?:legacy_|gluon_)?xception", "xception"),
    (r"condensenet", "condensenet"),
    (r"(?:espnet_?v2|eespnet)", "espnet_v2"),
    (r"espnet(?!_?v\d)", "espnet"),
)
# Prefixes that say where a name comes from, not what it is (hub paths): stripped to look up.
_SOURCE_PREFIX = re.compile(r"^(?:timm[/.]|torchvision[/.](?:models\.)?)+")
# Prefixes of a port of a family (timm's tf_* pad as TensorFlow): a different network, so not
# stripped to look up, but the family is the same for suggestions.
_PORT_PREFIX = re.compile(r"^(?:tf_|tv_)")
# Families whose trailing digits are a version, not a width (squeezenet1_0 is not 1.0×).
_VERSIONED = {"squeezenet"}

_WIDTH_X = re.compile(r"(?:^|_)x(\d+)(?:[_.](\d+))?(?=_|$)")  # zoo/torchvision: _x0_75, x1_0
_WIDTH_PAIR = re.compile(r"^_?(\d)_(\d+)(?=_|$)")  # torchvision mnasnet0_75
_WIDTH_TIMM = re.compile(r"(?:^|_)(\d{3})(?=[a-z]?(?:_|$))")  # timm: _050 is 0.5×, _110d
_GROUPS = re.compile(r"(?:^|_)g(\d+)(?=_|$)")
_RESOLUTION = re.compile(r"(?:^|_)r(\d+)(?=_|$)")


@dataclass(frozen=True)
class ParsedName:
    """The meaning of a model name; a field is None where the name does not say."""

    family: str | None
    width: float | None = None
    groups: int | None = None
    resolution: int | None = None
    variant: frozenset[str] = frozenset()


def normalize(name: str) -> str:
    """Lower case, ``-`` as ``_``, without a source prefix (``timm/``) or a weights tag
    (timm's ``.ra_in1k``): the spellings of one name that should find one model."""
    text = name.strip().lower().replace("-", "_")
    text = _SOURCE_PREFIX.sub("", text)
    return text.split(".", 1)[0]


def parse_name(name: str) -> ParsedName:
    """Family, width, groups, resolution and the other words of ``name``."""
    text = _PORT_PREFIX.sub("", normalize(name))
    found = next(
        (
            (family, match)
            for pattern, family in _FAMILY_PATTERNS
            if (match := re.match(pattern, text))
        ),
        None,
    )
    if found is None:
        return ParsedName(None)
    family, match = found
    rest = text[match.end() :]
    variant: set[str] = set()
    if family == "mnasnet":
        # torchvision's and timm's plain "mnasnet" is B1; timm's "semnasnet" is A1.
        variant.add("a1" if match.group(0) == "semnasnet" or "a1" in rest else "b1")
        rest = re.sub(r"(?:^|_)[ab]1(?=_|$)", "", rest)
    if family in _VERSIONED:
        version = rest.strip("_")
        return ParsedName(family, variant=frozenset({version} if version else ()))
    width, rest = _take_width(rest)
    groups, rest = _take_int(_GROUPS, rest)
    resolution, rest = _take_int(_RESOLUTION, rest)
    variant.update(word for word in rest.split("_") if word)
    return ParsedName(family, width, groups, resolution, frozenset(variant))


def _take_width(rest: str) -> tuple[float | None, str]:
    for pattern in (_WIDTH_X, _WIDTH_PAIR):
        match = pattern.search(rest)
        if match:
            whole, fraction = match.group(1), match.group(2) or "0"
            return float(f"{whole}.{fraction}"), rest[: match.start()] + rest[match.end() :]
    match = _WIDTH_TIMM.search(rest)
    if match:
        return int(match.group(1)) / 100, rest[: match.start()] + rest[match.end() :]
    return None, rest


def _take_int(pattern: re.Pattern[str], rest: str) -> tuple[int | None, str]:
    match = pattern.search(rest)
    if match is None:
        return None, rest
    return int(match.group(1)), rest[: match.start()] + rest[match.end() :]


def _log_distance(wanted: float | None, have: float | None, default: float) -> float:
    if wanted is None or wanted <= 0:
        return 0.0
    return abs(math.log(wanted / (have or default)))


def suggest(
    typed: str, families: Mapping[str, str], aliases: Mapping[str, Sequence[str]], n: int = 4
) -> list[str]:
    """Up to ``n`` model names for ``typed``, which matched none.

    ``families`` maps every model to its family; ``aliases``, a model to its other names. When
    ``typed`` names a family, its models are ranked by variant, groups, width and resolution
    (ratios, so 0.5 is as far from 1.0 as 2.0 is), then by spelling; otherwise by spelling alone.
    """
    wanted = parse_name(typed)
    candidates = [name for name, family in families.items() if family == wanted.family]
    if not candidates:
        return _by_spelling(typed, families, aliases, n)
    text = normalize(typed)

    def rank(name: str) -> tuple[float, ...]:
        have = parse_name(name)
        spelling = max(
            difflib.SequenceMatcher(None, text, normalize(other)).ratio()
            for other in (name, *aliases.get(name, ()))
        )
        return (
            len(wanted.variant ^ have.variant),
            _log_distance(wanted.groups, have.groups, 3.0),
            _log_distance(wanted.width, have.width, 1.0),
            _log_distance(wanted.resolution, have.resolution, 224.0),
            -spelling,
        )

    return sorted(candidates, key=rank)[:n]


def _by_spelling(
    typed: str, families: Mapping[str, str], aliases: Mapping[str, Sequence[str]], n: int
) -> list[str]:
    spellings = {name: name for name in families}
    for name, others in aliases.items():
        spellings.update({other: name for other in others})
    # A name of no family we have is most likely another network (resnet50): only a near-typo
    # of one of ours is worth suggesting, not whatever shares the most letters.
    close = difflib.get_close_matches(typed, spellings, n=3 * n, cutoff=0.75)
    found: list[str] = []
    for spelling in close:
        if spellings[spelling] not in found:
            found.append(spellings[spelling])
    return found[:n]
