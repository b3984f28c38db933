"""The reproduce grid's variants (``dede reproduce --variant``): one clean encoder and the attacks on it (and, if
it says so, the detectors) trained differently, to test a diagnosis.

They are data: ``variants.toml`` (next to this module, its header says how to write an entry) holds one table per
hand-written variant, the twins it generates (``<name>-content`` rescores its detectors, ``<name>-seed<k>`` trains
one attack's detectors again with another seed) and what its make targets run. ``load_table`` reads it into
``VARIANTS`` and the make targets; ``python -m training.research.variants`` writes what is generated from it, the
variant grids' make rules (``research-variants.mk``, included by ``research.mk``) and ``docs/research/REPRODUCE.md``
(``--check``: only say whether the committed ones are fresh)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.research.grid import ATTACKS

TABLE_FILE = Path(__file__).with_name("variants.toml")
# what the table generates, and what it reads besides, relative to the repository root
MAKEFILE, REPRODUCE_MD, RESEARCH_MK = Path("research-variants.mk"), Path("docs/research/REPRODUCE.md"), Path(
    "research.mk")
CLEANS = tuple(dict.fromkeys(a["clean"] for a in ATTACKS.values()))  # ("simclr", "clip")
_ATTACK_NAMES = {"clip-backdoor": "CLIP Backdoor", "badclip": "BadCLIP"}  # in the about text of a seed repeat


@dataclass(frozen=True)
class Variant:
    """Extra ``key=value`` settings for the pre-training of one clean encoder, for the attacks on it and
    (``train_sets``) for every detector of its grid, the controls included. A variant's detector settings come after
    the command line's ``--stage-set train:...``: they are what the variant measures."""

    clean: str
    pretrain_sets: tuple[str, ...]
    attack_sets: tuple[str, ...]
    about: str  # one line for docs/research/VARIANTS.md
    attacks: tuple[str, ...] = ()  # the attacks it trains (empty: every attack on its clean encoder)
    retrain: bool = False  # the plain grid's recipe trained again (settings that only measure aside): its cells repeat
    train_sets: tuple[str, ...] = ()
    # a variant whose trained encoders and detectors this one copies, calibrating the detectors again with the score
    # that ``train_sets`` names (its only setting): nothing is trained
    rescores: str = ""

    def __post_init__(self) -> None:
        if self.clean not in CLEANS:
            raise ValueError(f"clean {self.clean!r} is not a clean encoder; valid: {', '.join(CLEANS)}")
        if other := [a for a in self.attacks if a not in ATTACKS or ATTACKS[a]["clean"] != self.clean]:
            raise ValueError(f"attacks {', '.join(other)} are not attacks on the {self.clean} encoder")
        if self.rescores and [kv for kv in self.train_sets if not kv.startswith("score=")]:
            raise ValueError(f"a variant that rescores {self.rescores!r} sets the score only, not {self.train_sets}")

    @property
    def score(self) -> str | None:
        """The score its detectors are calibrated for, if it sets one."""
        return next((kv.split("=", 1)[1] for kv in reversed(self.train_sets) if kv.startswith("score=")), None)

    def trains(self, attack: str) -> bool:
        return ATTACKS[attack]["clean"] == self.clean and (not self.attacks or attack in self.attacks)


@dataclass(frozen=True)
class MakeTarget:
    """A variant grid's make target: ``make <name>`` runs ``dede reproduce --preset cpu --variant <variant> <run>
    --jobs 2 --threads 1`` for each argument set of ``runs``, in order (make syntax: ``$(VAR)`` is a variable of the
    table's ``[make.variables]``)."""

    name: str
    variant: str
    runs: tuple[str, ...]
    command_line: bool = True  # the grid records ``make <name>`` as its command; else the dede command itself
    wall: str = ""  # its rough wall time, if the table says it

    @property
    def help(self) -> str:
        """Its line in ``make help-research``."""
        return f"--variant {self.variant} " + "; then ".join(self.runs) + (f" ({self.wall})" if self.wall else "")


@dataclass(frozen=True)
class Group:
    """A make target that runs other targets of the table, in order."""

    name: str
    about: str
    targets: tuple[str, ...]


@dataclass
class Table:
    """What ``variants.toml`` holds: every variant (the generated twins included) and the make targets."""

    variants: dict[str, Variant] = dataclasses.field(default_factory=dict)
    targets: list[MakeTarget] = dataclasses.field(default_factory=list)
    groups: list[Group] = dataclasses.field(default_factory=list)
    variables: dict[str, str] = dataclasses.field(default_factory=dict)  # make variable -> its value
    seed_repeats: dict[str, tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=dict)  # (attack, seeds)
    content_scored: list[str] = dataclasses.field(default_factory=list)  # the variants with a ``-content`` twin


_FIELDS = {f.name: f for f in dataclasses.fields(Variant)}
_REQUIRED = [n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING]
_ENTRY_KEYS = {"base", "make", "command_line", "wall", "content", "seeds"}  # besides the fields
_CONTENT_KEYS, _SEED_KEYS = {"make", "seeds"}, {"attack", "seeds", "make"}
_MAKE_VARIABLE = re.compile(r"\$\((\w+)\)")


def _check_keys(where: str, entry: Any, allowed: set[str] | None = None) -> dict[str, Any]:
    """``entry`` (the table at the dotted path ``where``, "": the top level) itself if it is a table whose keys are
    all ``allowed`` (None: any); else a ValueError naming the stray ones."""
    place = f"[{where}]" if where else "the table's top level"
    if not isinstance(entry, dict):
        raise ValueError(f"{place} must be a table, not {entry!r}")
    if allowed is not None and (unknown := sorted(set(entry) - allowed)):
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in {place}; valid: {', '.join(sorted(allowed))}")
    return entry


def _field(name: str, value: Any) -> Any:
    """A table value as the ``Variant`` field ``name`` holds it (a TOML list of strings: a tuple)."""
    kind = _FIELDS[name].type  # a string: the module has postponed annotations
    if kind == "tuple[str, ...]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if kind in ("str", "bool") and type(value).__name__ == kind:
        return value
    raise ValueError(f"field {name} must be {'a list of strings' if kind.startswith('tuple') else 'a ' + kind}, "
                     f"not {value!r}")


def _variant(entry: dict[str, Any], variants: dict[str, Variant]) -> Variant:
    """A table entry's variant: its base's fields (if it names a ``base``) with its own written over them."""
    fields = {k: _field(k, v) for k, v in entry.items() if k in _FIELDS}
    if "base" not in entry:
        if missing := [k for k in _REQUIRED if k not in fields]:
            raise ValueError(f"missing field(s) {', '.join(missing)}, and no base to take them from")
        return Variant(**fields)
    if entry["base"] not in variants:
        raise ValueError(f"unknown base {entry['base']!r}: a base is a variant above it in the table")
    return replace(variants[entry["base"]], **fields)


def content_twin(name: str, v: Variant) -> Variant:
    """``<name>-content``: the detectors and controls of ``name``'s grid copied and calibrated again with the
    content-adjusted score; nothing is trained."""
    return replace(v, train_sets=("score=content",), retrain=False, rescores=name,
                   about=f"the `{name}` grid's detectors and controls, copied and calibrated again with the "
                   "content-adjusted score (the paper score over the image's content to a power fitted on the "
                   "auxiliary images): does a score that no longer ranks images by how much there is to draw see the "
                   "backdoor better?")


def seed_twin(name: str, v: Variant, attack: str, seed: int) -> Variant:
    """``<name>-seed<seed>``: the detector and control of ``attack`` in ``name``'s grid trained again with another
    seed, nothing else changed; if ``name`` rescores a grid, the same detectors of that grid's seed repeat,
    rescored."""
    crops = ", other crops" if any(t.startswith("aux_crops=") for t in v.train_sets) else ""
    how = (f"of the `{v.rescores}-seed{seed}` grid, scored as this variant scores" if v.rescores else
           f"trained again with seed {seed} (another initialisation, mask stream and held-out split{crops})")
    return replace(v, attacks=(attack,), retrain=False,
                   train_sets=v.train_sets if v.rescores else (*v.train_sets, f"seed={seed}"),
                   rescores=f"{v.rescores}-seed{seed}" if v.rescores else "",
                   about=f"the `{name}` {_ATTACK_NAMES.get(attack, attack.upper())} detector and control {how}: how "
                   "far does the detector's own seed move the row?")


def _targets(variant: str, make: Any, command_line: bool = True, wall: str = "") -> list[MakeTarget]:
    """A variant's make targets: ``make`` lists the argument sets of ``reproduce-<variant>`` or maps each target to
    its own; ``wall`` is the first one's."""
    spec = make if isinstance(make, dict) else {f"reproduce-{variant}": make}
    targets: list[MakeTarget] = []
    for target, runs in spec.items():
        if not isinstance(runs, list) or not runs or not all(isinstance(r, str) and r.strip() for r in runs):
            raise ValueError(f"make target {target}: a list of `dede reproduce` argument sets, not {runs!r}")
        if commas := [r for r in runs if "," in r]:
            raise ValueError(f"make target {target}: make's $(call) splits arguments at commas: {commas}")
        targets.append(MakeTarget(target, variant, tuple(runs), command_line, "" if targets else wall))
    return targets


def _add(table: Table, name: str, v: Variant, where: str, spec: dict[str, Any]) -> None:
    """Add variant ``name`` (defined by the table at the dotted path ``where``) with the make targets of ``spec``,
    then the seed repeats that ``spec["seeds"]`` asks for."""
    if name in table.variants:
        raise ValueError(f"variant {name!r} is defined twice")
    table.variants[name] = v
    if "make" in spec:
        table.targets += _targets(name, spec["make"], spec.get("command_line", True), spec.get("wall", ""))
    if "seeds" not in spec:
        return
    seeds = _check_keys(f"{where}.seeds", spec["seeds"], _SEED_KEYS)
    attack, numbers = seeds.get("attack"), seeds.get("seeds")
    if not isinstance(attack, str) or attack not in ATTACKS or not v.trains(attack):
        raise ValueError(f"[{where}.seeds]: attack {attack!r} is not an attack that {name!r} trains")
    if not isinstance(numbers, list) or not numbers or any(type(k) is not int or k < 1 for k in numbers) \
            or len(set(numbers)) < len(numbers):
        raise ValueError(f"[{where}.seeds]: seeds must list distinct seeds >= 1 (seed 0 is the variant), not "
                         f"{numbers!r}")
    table.seed_repeats[name] = (attack, tuple(numbers))
    for k in numbers:
        _add(table, f"{name}-seed{k}", seed_twin(name, v, attack, k), f"{where}.seeds",
             {"make": seeds["make"]} if "make" in seeds else {})


def _add_entry(table: Table, name: str, entry: Any) -> None:
    """Add a hand-written variant of the table (``[variant.<name>]``) and its twins."""
    where = f"variant.{name}"
    entry = _check_keys(where, entry, set(_FIELDS) | _ENTRY_KEYS)
    if not isinstance(entry.get("command_line", True), bool) or not isinstance(entry.get("wall", ""), str):
        raise ValueError(f"[{where}]: command_line is true or false, wall a string")
    v = _variant(entry, table.variants)
    _add(table, name, v, where, entry)
    if "content" in entry:
        content = _check_keys(f"{where}.content", entry["content"], _CONTENT_KEYS)
        table.content_scored.append(name)
        _add(table, f"{name}-content", content_twin(name, v), f"{where}.content", content)


def _add_make(table: Table, make: Any) -> None:
    """The table's ``[make]``: its variables and its groups of targets."""
    make = _check_keys("make", make, {"variables", "groups"})
    variables = _check_keys("make.variables", make.get("variables", {}))
    if bad := [k for k, v in variables.items() if not isinstance(v, str)]:
        raise ValueError(f"[make.variables]: {', '.join(bad)} must be strings")
    table.variables = dict(variables)
    for name, group in _check_keys("make.groups", make.get("groups", {})).items():
        group = _check_keys(f"make.groups.{name}", group, {"about", "targets"})
        if not isinstance(group.get("about"), str) or not isinstance(group.get("targets"), list):
            raise ValueError(f"[make.groups.{name}] needs an about string and a list of targets")
        table.groups.append(Group(name, group["about"], tuple(group["targets"])))


def _check(table: Table) -> None:
    """What only the whole table can tell: every variant rescores a variant of it, the make targets have distinct
    names, a group runs targets of the table, and every ``$(VAR)`` of a run is a variable of ``[make.variables]``."""
    for name, v in table.variants.items():
        if v.rescores and v.rescores not in table.variants:
            raise ValueError(f"variant {name!r} rescores {v.rescores!r}, which is not a variant of the table")
    names = [t.name for t in table.targets] + [g.name for g in table.groups]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"make target(s) {', '.join(twice)} defined twice")
    for g in table.groups:
        if unknown := [t for t in g.targets if t not in names or t == g.name]:
            raise ValueError(f"[make.groups.{g.name}] runs {', '.join(unknown)}: not variant targets of the table")
    for t in table.targets:
        if unknown := sorted({m for r in t.runs for m in _MAKE_VARIABLE.findall(r)} - set(table.variables)):
            raise ValueError(f"make target {t.name} uses $({'), $('.join(unknown)}), not in [make.variables]")


def load_table(data: dict[str, Any]) -> Table:
    """The variants and make targets of a parsed ``variants.toml``, in its order (each hand-written variant, then its
    seed repeats, its ``-content`` twin and that twin's seed repeats). A bad entry raises a ValueError that names
    it."""
    _check_keys("", data, {"variant", "make"})
    table = Table()
    _add_make(table, data.get("make", {}))
    for name, entry in _check_keys("variant", data.get("variant", {})).items():
        try:
            _add_entry(table, name, entry)
        except (ValueError, TypeError) as e:  # a Variant's own checks say what, not where
            raise ValueError(f"variants table, [variant.{name}]: {e}") from None
    _check(table)
    return table


TABLE = load_table(tomllib.loads(TABLE_FILE.read_text()))
VARIANTS = TABLE.variants
# the variants whose detectors are also scored with the content-adjusted score (``service.scores``), nothing
# retrained: ``<variant>-content``
CONTENT_SCORED = tuple(TABLE.content_scored)
# the detector's own seed: variant -> (the attack whose detector and control are trained again, the seeds); the
# repeats are ``<variant>-seed<k>`` (seed 0 is the variant itself), those of a variant that rescores another rescore
# that variant's seed repeats
SEED_REPEATS = TABLE.seed_repeats


def seed_repeat(variant: str) -> tuple[str, int] | None:
    """(the variant repeated, the detector's seed) of a variant of ``SEED_REPEATS`` or of one of its repeats
    (``captions-classonly-long12-seed2``: (``captions-classonly-long12``, 2)); None for any other variant."""
    if variant in SEED_REPEATS:
        return variant, 0
    name, _, seed = variant.rpartition("-seed")
    return (name, int(seed)) if seed.isdigit() and name in SEED_REPEATS and int(seed) in SEED_REPEATS[name][1] \
        else None


# --- what the table generates -------------------------------------------------------------------------------------

_GENERATED = "Generated from training/research/variants.toml by `python -m training.research.variants`"


def _wrap(head: str, words: list[str], width: int = 118) -> list[str]:
    """``head`` followed by ``words`` as make lines of at most ``width`` characters, continued with backslashes."""
    lines, line = [], head
    for word in words:
        if len(line) + len(word) + 3 > width:
            lines.append(line + " \\")
            line = "\t" + word
        else:
            line += " " + word
    return [*lines, line]


def makefile(table: Table) -> str:
    """``research-variants.mk``: the table's make variables, then one rule per variant target and group, each under
    its ``## `` line for ``make help-research``. The rules call research.mk's ``variant-grid`` (the run recorded as
    ``make <target>``) or ``variant-run`` (``command_line = false``)."""
    lines = [f"# {_GENERATED}: do not edit.",
             "# Edit the table and run that command again; tests/test_makefile.py checks that this file is fresh.", ""]
    lines += [f"{name} := {value}" for name, value in table.variables.items()]
    lines += ["", *_wrap(".PHONY:", [t.name for t in table.targets] + [g.name for g in table.groups]), ""]
    for t in table.targets:
        macro = "variant-grid" if t.command_line else "variant-run"
        lines += [f"## {t.help}", f"{t.name}:", *(f"\t$(call {macro},{t.variant},{run})" for run in t.runs), ""]
    for g in table.groups:
        lines += [f"## {g.about}", *_wrap(f"{g.name}:", list(g.targets)), ""]
    return "\n".join(lines)


def help_entries(text: str) -> list[tuple[str, str]]:
    """(target, its line) of every rule of a makefile's ``text`` with a ``## `` line right above it, in file order:
    what ``make help`` and ``make help-research`` print."""
    entries, note = [], ""
    for line in text.splitlines():
        if line.startswith("## "):
            note = line[3:]
            continue
        if note and (m := re.match(r"([A-Za-z][\w.-]*):(?!=)", line)):
            entries.append((m.group(1), note))
        note = ""
    return entries


def _split_wall(line: str) -> tuple[str, str]:
    """A help line without its rough wall time, and the wall time: a last parenthesis that counts minutes or hours
    (``... (about 110 minutes on the 2-core CPU machine)``); "" if it has none."""
    m = re.fullmatch(r"(.*?)\s*\(([^()]*\b(?:minutes?|hours?)\b[^()]*)\)", line)
    return (m.group(1), m.group(2)) if m else (line, "")


def _md(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|")


def reproduce_md(table: Table, research_mk: str) -> str:
    """``docs/research/REPRODUCE.md``: the research make targets, research.mk's (from their ``## `` lines) and the
    variant grids' (from the table), each with what it runs or measures and its rough wall time."""
    lines = ["# Research make targets", "",
             "Generated by `python -m training.research.variants` from the variants table "
             "(`training/research/variants.toml`) and the `## ` lines of `research.mk`: do not edit. "
             "`make help-research` lists the same targets, `make help` the product's.", "",
             "## Grids and studies (`research.mk`)", "", "| target | what it runs / measures | wall time |",
             "|---|---|---|"]
    for target, line in help_entries(research_mk):
        what, wall = _split_wall(line)
        lines += [] if target.startswith("help") else [f"| `make {target}` | {_md(what)} | {_md(wall) or '-'} |"]
    own = [f"`{t.name}`" for t in table.targets if not t.command_line]
    lines += ["", "## Variant grids (`training/research/variants.toml`)", "",
              "Each run is `dede reproduce --preset cpu --variant VARIANT RUN --jobs 2 --threads 1` in "
              "`runs/reproduce-cpu-VARIANT`, resumable, its records' command `make TARGET`" +
              (f" ({', '.join(own)}: the `dede reproduce` command)" if own else "") + ". " +
              " ".join(f"`$({k})` is `{v}`." for k, v in table.variables.items()), "",
              "| target | variant: what it measures | runs (RUN) | wall time |", "|---|---|---|---|"]
    seen: set[str] = set()
    for t in table.targets:
        about = "as above" if t.variant in seen else _md(table.variants[t.variant].about)
        seen.add(t.variant)
        runs = "; then ".join(f"`{r}`" for r in t.runs)
        lines.append(f"| `make {t.name}` | `{t.variant}`: {about} | {runs} | {_md(t.wall) or '-'} |")
    for g in table.groups:
        what, wall = _split_wall(g.about)
        lines.append(f"| `make {g.name}` | {_md(what)} | " + ", ".join(f"`make {t}`" for t in g.targets) +
                     f" | {_md(wall) or '-'} |")
    return "\n".join([*lines, ""])


def generated(root: Path, table: Table = TABLE) -> dict[Path, str]:
    """What the table generates under the repository root ``root``: path -> its text."""
    return {root / MAKEFILE: makefile(table),
            root / REPRODUCE_MD: reproduce_md(table, (root / RESEARCH_MK).read_text())}


def main(argv: list[str] | None = None) -> int:
    """Write the generated files (or, with ``--check``, say which are stale: exit status 1)."""
    p = argparse.ArgumentParser(prog="python -m training.research.variants", description=(
        f"Write {MAKEFILE} and {REPRODUCE_MD} from training/research/variants.toml and {RESEARCH_MK}."))
    p.add_argument("--root", default=".", help="the repository root (default: the working directory)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    a = p.parse_args(argv)
    stale = {path: text for path, text in generated(Path(a.root)).items()
             if not path.exists() or path.read_text() != text}
    for path, text in stale.items():
        if a.check:
            print(f"{path} is stale: run python -m training.research.variants", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
