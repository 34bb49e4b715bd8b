"""release.toml -> ReleaseConfig (validated), and the one merge of command-line flags over it.

Unknown keys and wrong types are a ``ConfigError`` naming the table, the key, the line and a
"did you mean" hint. Secrets (the pseudonym key) are read from a file or an environment
variable, never from release.toml itself, and never shown in ``repr``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from packager.errors import ConfigError

KEY_ENV = "DCMPACK_KEY"
#: A key carries at least this many bytes of randomness: 64 hex digits, as ``dcmpack init`` and
#: ``secrets.token_hex(32)`` write them, or 32 raw random bytes.
MIN_KEY_BYTES = 32
MAKE_KEY = "python -c 'import secrets; print(secrets.token_hex(32))' > release.key && chmod 600 release.key"


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    name: str = "dataset"
    version: str = "1.0.0"
    license: str = "CC0"
    authors: tuple[str, ...] = ()
    description: str = ""
    sessions: str = "auto"


@dataclass(frozen=True, slots=True)
class DeidConfig:
    key_file: Path | None = None
    key_env: str = KEY_ENV
    subject_map: Path | None = None
    dates: str = "shift"
    max_age: int = 89
    sex: bool = True


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    allow: tuple[str, ...] = ()
    allow_free_text: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``[audit] accept``: HMAC-SHA256 (under the release key) of values reviewed as harmless
    (``dcmpack audit --explain`` prints them); never the values themselves."""

    accept: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    match: tuple[tuple[str, Any], ...]
    datatype: str = ""
    suffix: str = ""
    entities: tuple[tuple[str, str], ...] = ()
    skip: bool = False
    # where the rule was written, for errors: the file's name and (key -> line), "" = the rule's header
    where: str = ""
    lines: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class HeuristicConfig:
    name: str = "reproin"
    path: Path | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class ExcludeConfig:
    localizers: bool = True
    derived: bool = True
    sop_classes: tuple[str, ...] = ()


class Engine(StrEnum):
    """The conversion engines (``[convert] engine``, ``--engine``); the names are their packages'.

    Defined here, not in ``convert``: config, the CLI and the convert stage all name them, and
    config imports no stage. Members are ``str``: they compare and serialise as their names.
    """

    DICOM2NIFTI = "dicom2nifti"
    DCM2NIIX = "dcm2niix"
    AUTO = "auto"  # ours first, dcm2niix for each series ours refuses (marked in MANIFEST and report)


@dataclass(frozen=True, slots=True)
class ConvertConfig:
    engine: str = Engine.DICOM2NIFTI


#: Runs whose image shows a head (a face): defaced unless exempted (``[deface]``); verify checks them.
HEAD_SUFFIXES = (
    "T1w",
    "T2w",
    "FLAIR",
    "PDw",
    "T2starw",
    "MP2RAGE",
    "UNIT1",
    "T1map",
    "magnitude",
    "magnitude1",
    "magnitude2",
)


@dataclass(frozen=True, slots=True)
class DefaceConfig:
    """``[deface]``: on by default; off, or a narrower suffix list, only with a written reason."""

    enabled: bool = True
    reason: str = ""
    suffixes: tuple[str, ...] = HEAD_SUFFIXES

    def exemption(self, suffix: str) -> str:
        """Why runs with ``suffix`` are not defaced by config ("" when they are)."""
        if suffix not in HEAD_SUFFIXES and suffix not in self.suffixes:
            return ""
        if not self.enabled:
            return f"defacing disabled: {self.reason}"
        return "" if suffix in self.suffixes else f"suffix not in [deface] suffixes: {self.reason}"


@dataclass(frozen=True, slots=True)
class BundleConfig:
    name: str = "{name}-{version}"


@dataclass(frozen=True, slots=True)
class LabelsConfig:
    """``[labels]``: BIDS labels approved for publication (see ``packager.naming.labels``).

    One list per entity key (labels from header text that are not protocol vocabulary must be
    listed to be published), extra vocabulary words, and what happens to any other label:
    ``refuse`` (the build stops, exit 2) or ``neutral`` (replaced by task1, acq1, ...).
    """

    task: tuple[str, ...] = ()
    acq: tuple[str, ...] = ()
    ses: tuple[str, ...] = ()
    ce: tuple[str, ...] = ()
    trc: tuple[str, ...] = ()
    stain: tuple[str, ...] = ()
    rec: tuple[str, ...] = ()
    dir: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    mod: tuple[str, ...] = ()
    echo: tuple[str, ...] = ()
    flip: tuple[str, ...] = ()
    inv: tuple[str, ...] = ()
    mt: tuple[str, ...] = ()
    part: tuple[str, ...] = ()
    recording: tuple[str, ...] = ()
    chunk: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()
    unapproved: str = "refuse"

    @staticmethod
    def entities() -> tuple[str, ...]:
        """The entity keys that take a list of approved labels."""
        return tuple(f.name for f in dataclasses.fields(LabelsConfig) if f.name not in ("vocabulary", "unapproved"))

    def approved(self, entity: str) -> tuple[str, ...]:
        """The labels approved for ``entity`` (empty for an unknown key)."""
        return getattr(self, entity, ()) if entity in self.entities() else ()


@dataclass(frozen=True, slots=True)
class ReleaseConfig:
    """Everything a build needs; ``key`` is the secret, hidden from repr."""

    dataset: DatasetConfig = DatasetConfig()
    deid: DeidConfig = DeidConfig()
    sidecar: SidecarConfig = SidecarConfig()
    heuristic: HeuristicConfig = HeuristicConfig()
    exclude: ExcludeConfig = ExcludeConfig()
    convert: ConvertConfig = ConvertConfig()
    deface: DefaceConfig = DefaceConfig()
    bundle: BundleConfig = BundleConfig()
    labels: LabelsConfig = LabelsConfig()
    audit: AuditConfig = AuditConfig()
    sources: tuple[str, ...] = ()
    output: Path = Path("release")
    key: bytes = field(default=b"", repr=False)
    jobs: int = 0
    executor: str = "local"
    force: bool = False
    new_key: bool = False  # --force may replace a bundle made with another key (new pseudonyms)
    strict: bool = False  # a damaged file stops the build (exit 3) instead of leaving out its series
    ca_bundle: str | None = None
    move_dest: str | None = None
    retrieve: str | None = None
    config_path: Path | None = None
    config_digest: str = ""
    cache: Path | None = None  # the build cache folder (packager.cache); None: no cache
    previous: Path | None = None  # the previous release's bundle, for this release's CHANGES entry

    def digest_view(self) -> dict:
        """The config as recorded in MANIFEST.json: no secrets, no paths, no sources."""
        return {
            "dataset": dataclasses.asdict(self.dataset),
            "deid": {
                "dates": self.deid.dates,
                "max_age": self.deid.max_age,
                "sex": self.deid.sex,
                "subject_map": self.deid.subject_map is not None,
            },
            "sidecar": {"allow": list(self.sidecar.allow), "allow_free_text": list(self.sidecar.allow_free_text)},
            "heuristic": {
                "name": self.heuristic.name if self.heuristic.path is None else "file",
                "rules": len(self.heuristic.rules),
            },
            "exclude": dataclasses.asdict(self.exclude),
            "convert": dataclasses.asdict(self.convert),
            "labels": {
                "approved": sum(len(self.labels.approved(k)) for k in self.labels.entities()),
                "vocabulary": len(self.labels.vocabulary),
                "unapproved": self.labels.unapproved,
            },
            # a count only: which values were accepted stays with the data owner
            **({"audit": {"accepted": len(self.audit.accept)}} if self.audit.accept else {}),
            "deface": {
                "enabled": self.deface.enabled,
                "reason": self.deface.reason,
                "suffixes": list(self.deface.suffixes),
            },
        }


_TABLES = {
    "dataset": DatasetConfig,
    "deid": DeidConfig,
    "sidecar": SidecarConfig,
    "heuristic": HeuristicConfig,
    "exclude": ExcludeConfig,
    "convert": ConvertConfig,
    "deface": DefaceConfig,
    "bundle": BundleConfig,
    "labels": LabelsConfig,
    "audit": AuditConfig,
}
_RULE_KEYS = ("match", "datatype", "suffix", "entities", "skip")
_CHOICES = {
    ("dataset", "sessions"): ("auto", "always", "never"),
    ("deid", "dates"): ("shift", "remove"),
    ("convert", "engine"): tuple(Engine),
    ("labels", "unapproved"): ("refuse", "neutral"),
}


def starter_config() -> str:
    """The commented release.toml that ``dcmpack init`` writes (``packager/data/starter_release.toml``)."""
    from importlib.resources import files

    return files("packager.data").joinpath("starter_release.toml").read_text(encoding="utf-8")


def _line_of(text: str, table: str, key: str | None) -> int:
    """Best-effort line number of ``key`` in ``[table]`` (tomllib keeps no positions)."""
    lines = text.splitlines()
    in_table = table == ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        header = re.match(r"^\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?", stripped)
        if header:
            in_table = header.group(1).split(".")[0] == table
            if key is None and in_table:
                return number
            continue
        if in_table and key is not None and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return 0


def _fail(text: str, where: str, table: str, key: str | None, problem: str) -> ConfigError:
    line = _line_of(text, table, key)
    at = f"{where}:{line}" if line else where
    section = f"[{table}]" if table else ""
    keypart = f' "{key}"' if key else ""
    return ConfigError(f"{at} {section}{keypart}: {problem}".replace("  ", " "))


def _hint(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _coerce(text: str, where: str, table: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the dataclass default and convert it."""
    if (table, key) in _CHOICES and value not in _CHOICES[(table, key)]:
        raise _fail(text, where, table, key, f"must be one of {', '.join(_CHOICES[(table, key)])}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(text, where, table, key, "must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(text, where, table, key, "must be an integer")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(text, where, table, key, "must be a list of strings")
        return tuple(value)
    if default is None or isinstance(default, Path):
        if not isinstance(value, str):
            raise _fail(text, where, table, key, "must be a path string")
        return value
    if not isinstance(value, str):
        raise _fail(text, where, table, key, "must be a string")
    return value


def _rule_lines(text: str) -> list[tuple[tuple[str, int], ...]]:
    """Per ``[[heuristic.rules]]`` block, in order: ("" -> its header line, key -> its line).

    tomllib keeps no positions; rules written as ``[[heuristic.rules]]`` tables (the documented
    form) are found by their headers, anything else gets no line numbers.
    """
    blocks: list[list[tuple[str, int]]] = []
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = re.match(r"^\[\[\s*heuristic\.rules\s*\]\]", stripped) is not None
            if inside:
                blocks.append([("", number)])
            continue
        key = re.match(r"^([A-Za-z0-9_\-]+)\s*=", stripped)
        if inside and key:
            blocks[-1].append((key.group(1), number))
    return [tuple(block) for block in blocks]


def _parse_rules(text: str, where: str, raw: Any) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise _fail(text, where, "heuristic", "rules", "must be an array of tables [[heuristic.rules]]")
    rules = []
    lines = _rule_lines(text)
    if len(lines) != len(raw):
        lines = [()] * len(raw)
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise _fail(text, where, "heuristic", "rules", f"rule {number} must be a table")
        for key in item:
            if key not in _RULE_KEYS:
                raise _fail(text, where, "heuristic", key, f"unknown key in rule {number}{_hint(key, _RULE_KEYS)}")
        match = item.get("match", {})
        if not isinstance(match, dict) or not match:
            raise _fail(text, where, "heuristic", "match", f"rule {number} needs a non-empty match table")
        entities = item.get("entities", {})
        if not isinstance(entities, dict) or not all(isinstance(v, (str, int)) for v in entities.values()):
            raise _fail(text, where, "heuristic", "entities", f"rule {number}: entities must map names to labels")
        skip = bool(item.get("skip", False))
        if not skip and not (item.get("datatype") and item.get("suffix")):
            raise _fail(text, where, "heuristic", "rules", f"rule {number} needs datatype and suffix (or skip = true)")
        rules.append(
            Rule(
                match=tuple(sorted(match.items())),
                datatype=str(item.get("datatype", "")),
                suffix=str(item.get("suffix", "")),
                entities=tuple((str(k), str(v)) for k, v in entities.items()),
                skip=skip,
                where=where,
                lines=lines[number - 1],
            )
        )
    return tuple(rules)


def load_config(path: Path | None) -> ReleaseConfig:
    """Read and validate ``release.toml``; relative paths resolve against its folder.

    Parameters
    ----------
    path : Path or None
        The file; None gives the defaults.

    Returns
    -------
    ReleaseConfig

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown table or key, wrong type or value.
    """
    if path is None:
        return ReleaseConfig()
    path = Path(path)
    where = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (create one with: dcmpack init)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: config file unreadable ({type(exc).__name__})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML ({exc})") from None

    base = path.parent
    built: dict[str, Any] = {}
    for table, value in raw.items():
        if table not in _TABLES:
            raise _fail(text, where, table, None, f"unknown table{_hint(table, _TABLES)}")
        if not isinstance(value, dict):
            raise _fail(text, where, table, None, "must be a table")
        cls = _TABLES[table]
        defaults = cls()
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            if table == "heuristic" and key == "rules":
                kwargs["rules"] = _parse_rules(text, where, item)
                continue
            if key not in names:
                raise _fail(text, where, table, key, f"unknown key{_hint(key, names)}")
            coerced = _coerce(text, where, table, key, item, getattr(defaults, key))
            if key in ("key_file", "subject_map", "path"):
                coerced = (base / coerced).resolve()
            kwargs[key] = coerced
        if table == "heuristic" and "name" in kwargs and kwargs["name"].endswith(".py"):
            kwargs["path"] = (base / kwargs.pop("name")).resolve()
            kwargs["name"] = "file"
        built[table] = cls(**kwargs)
    if "sidecar" in built:  # unknown or denied keys are errors, never silently ignored
        from packager.sidecar.allowlist import check_config

        sidecar = built["sidecar"]
        for key, args in (("allow", (sidecar.allow, ())), ("allow_free_text", ((), sidecar.allow_free_text))):
            problem = check_config(*args)
            if problem:
                raise _fail(text, where, "sidecar", key, problem)
    if "labels" in built:  # approved labels and words are BIDS labels: letters and digits only
        for key in (*LabelsConfig.entities(), "vocabulary"):
            if not all(re.fullmatch(r"[A-Za-z0-9]+", v) for v in getattr(built["labels"], key)):
                raise _fail(text, where, "labels", key, "labels must be letters and digits only")
    for accepted in built["audit"].accept if "audit" in built else ():
        if not re.fullmatch(r"[0-9a-f]{64}", accepted):
            raise _fail(text, where, "audit", "accept", "must be HMACs as dcmpack audit --explain prints them")
    if "deface" in built:
        refusal = _deface_problem(built["deface"])
        if refusal:
            raise _fail(text, where, "deface", *refusal)
    if "dataset" in built and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", built["dataset"].name):
        raise _fail(text, where, "dataset", "name", "must be letters, digits, '.', '_' or '-'")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return ReleaseConfig(**built, config_path=path.resolve(), config_digest=digest)


def _deface_problem(deface: DefaceConfig) -> tuple[str, str] | None:
    """(key, problem) when ``[deface]`` turns defacing off or narrows it without a reason."""
    if not deface.reason.strip() and not deface.enabled:
        return "reason", 'enabled = false needs a reason = "..." (it is written into MANIFEST.json and the report)'
    if not deface.reason.strip() and set(HEAD_SUFFIXES) - set(deface.suffixes):
        return "reason", 'leaving out a head suffix needs a reason = "..." (it is written into MANIFEST.json)'
    return None


def read_key(deid: DeidConfig, key_file: Path | None = None) -> bytes:
    """Load the pseudonym secret: --key-file, then [deid] key_file, then the env variable.

    A key file that group or others can read is refused (with the ``chmod`` to run): anyone
    with it can recompute every pseudonym and date shift. The one exception is the sample's
    public demo key (``sample_data/sample.key``, 0644 after a checkout): it protects nothing,
    and using it is said on stderr.
    """
    path = key_file or deid.key_file
    if path is not None:
        try:
            data = Path(path).read_bytes().strip()
            mode = Path(path).stat().st_mode & 0o777
        except FileNotFoundError:
            raise ConfigError(f"key file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"key file unreadable: {path} ({type(exc).__name__})") from None
        if hashlib.sha256(data).hexdigest() == DEMO_KEY_SHA256:
            logging.getLogger(__name__).warning(
                "%s is the public demo key of the sample: pseudonyms and date shifts made with it are not secret",
                Path(path).name,
            )
        elif mode & 0o077:
            raise ConfigError(
                f"key file {path} can be read by other users (mode {mode:04o}): "
                f"make it private with: chmod 600 {shlex.quote(str(path))}"
            )
    else:
        data = os.environ.get(deid.key_env, "").strip().encode()
    if not data:
        return b""
    problem = key_weakness(data)
    if problem:
        raise ConfigError(f"the pseudonym key is not a strong random key ({problem}): make one with: {MAKE_KEY}")
    return data


#: sha256 of the sample's key (``sample_data/sample.key``, published with the code): the only
#: key file accepted whatever its mode, since it is public anyway.
DEMO_KEY_SHA256 = "6772024a5e6d919ec9ffd3994df9c4f2186d96bef78d01a4149ec19f177ade91"


def key_weakness(data: bytes) -> str:
    """Why ``data`` is not a strong random key ("" when it is).

    Pseudonyms and date shifts are HMACs under the key, and MANIFEST.json carries a short key
    fingerprint: a guessable key (a passphrase, a pattern) would let anyone who has the bundle
    test guesses offline and reverse them. So a key must be random material of at least 32 bytes:
    64 or more hex digits, or 32 or more raw bytes that are not text. Text in any other form (a
    passphrase, base64) is refused, and so are patterns: too few distinct digits, or a key that
    compresses (random bytes do not).
    """
    import zlib

    text = data.decode("latin-1")
    if all(c in "0123456789abcdefABCDEF" for c in text):
        if len(text) < 2 * MIN_KEY_BYTES:
            return f"{len(text)} hex digits, at least {2 * MIN_KEY_BYTES} needed"
        # 64 random hex digits show about 16 distinct digits; fewer than 12 happens by chance
        # about once in 10^8 keys
        if len(set(text.lower())) < 12 or len(zlib.compress(data, 9)) < len(data) * 3 // 4:
            return "a repeating pattern, not random"
        return ""
    if all(32 <= b < 127 for b in data):
        return "text that is not hex digits: a passphrase is guessable"
    if len(data) < MIN_KEY_BYTES:
        return f"{len(data)} bytes, at least {MIN_KEY_BYTES} needed"
    if len(zlib.compress(data, 9)) < len(data):
        return "a repeating pattern, not random"
    return ""


#: ``--executor`` values: the local process pool, or a Dask scheduler's address.
LOCAL_EXECUTOR = "local"
DASK_SCHEME = "dask://"
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$")


def parse_executor(spec: str) -> str | None:
    """``local`` -> None; ``dask://HOST:PORT`` -> ``tcp://HOST:PORT``; anything else: ValueError."""
    text = (spec or LOCAL_EXECUTOR).strip()
    if text == LOCAL_EXECUTOR:
        return None
    if not text.startswith(DASK_SCHEME):
        raise ValueError(f'unknown executor "{text}" (use local or dask://HOST:PORT)')
    match = _ADDRESS.match(text[len(DASK_SCHEME) :])
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f'"{text}" is not dask://HOST:PORT (e.g. dask://127.0.0.1:8786)')
    return f"tcp://{match['host']}:{int(match['port'])}"


#: Flags ``merge_flags`` copies as they are when given (not None, empty or ``()``).
_PLAIN_FLAGS = (
    "sources",
    "output",
    "jobs",
    "executor",
    "force",
    "strict",
    "new_key",
    "ca_bundle",
    "move_dest",
    "retrieve",
    "cache",
    "previous",
)
#: The flags ``merge_flags`` applies; any other name is a programming error, not bad input.
FLAGS = frozenset({"heuristic", "engine", "subject_map", "key_file", *_PLAIN_FLAGS})


def merge_flags(config: ReleaseConfig, **flags: Any) -> ReleaseConfig:
    """Apply command-line flags over the file config (a flag given wins).

    Raises ``TypeError`` naming any flag not in ``FLAGS`` (a misspelt flag, or a config section
    such as ``deface=`` that belongs in ``dataclasses.replace``): ignoring it would build with a
    setting the caller did not ask for. A flag's name is code, never a header value.
    """
    unknown = sorted(set(flags) - FLAGS)
    if unknown:
        raise TypeError(f"merge_flags() got unknown flag(s): {', '.join(unknown)}")
    changes: dict[str, Any] = {}
    if flags.get("heuristic"):
        value = str(flags["heuristic"])
        if value.endswith(".py"):
            changes["heuristic"] = dataclasses.replace(config.heuristic, name="file", path=Path(value).resolve())
        elif value.endswith(".toml"):  # the [[heuristic.rules]] of another file (a rules file under test)
            rules = load_config(Path(value)).heuristic.rules
            if not rules:
                raise ConfigError(f"--heuristic {value}: no [[heuristic.rules]] in it")
            changes["heuristic"] = HeuristicConfig(name="rules", rules=rules)
        elif value in ("reproin", "rules"):
            changes["heuristic"] = dataclasses.replace(config.heuristic, name=value, path=None)
        else:
            raise ConfigError(f'--heuristic: unknown heuristic "{value}" (reproin, rules, a .py or a rules .toml file)')
    if flags.get("engine"):
        if flags["engine"] not in tuple(Engine):
            raise ConfigError(f"--engine: must be {' or '.join(Engine)}")
        changes["convert"] = ConvertConfig(engine=flags["engine"])
    if flags.get("subject_map"):
        changes["deid"] = dataclasses.replace(
            changes.get("deid", config.deid), subject_map=Path(flags["subject_map"]).resolve()
        )
    for name in _PLAIN_FLAGS:
        if flags.get(name) not in (None, (), ""):
            changes[name] = flags[name]
    if "previous" in changes and not Path(changes["previous"]).is_file():
        raise ConfigError(f"--previous: {changes['previous']}: no such bundle")
    if "jobs" in changes and changes["jobs"] < 0:
        raise ConfigError("--jobs must be 0 (all cores) or a positive number")
    try:
        parse_executor(changes.get("executor", config.executor))
    except ValueError as exc:
        raise ConfigError(f"--executor: {exc}") from None
    merged = dataclasses.replace(config, **changes)
    key = read_key(merged.deid, flags.get("key_file"))
    return dataclasses.replace(merged, key=key)
