"""The fleet file: read, checked and resolved into one set of inputs per target.

    defaults:                     # any input, kebab-case, for every target
      database-url: postgresql://deployer:${FLEET_PASSWORD}@db.internal:5432/{name}
    targets:
      - name: tenant_canary       # {name} in any value is the target's name
        wave: 0
      - name: tenant_b
        wave: 1
        database-url-env: TENANT_B_URL   # the URL from this environment variable instead

Every error is one line naming the entry (`targets[3] (tenant_b): …`) and raised before anything
runs. Standard library only (the workflow's plan job runs it with the runner's python3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deployer.fleet import yamlish

NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
MAX_TARGETS = 100_000
MAX_WAVE = 1000
# Keys of the fleet file that are not inputs.
FLEET_KEYS = ("name", "wave", "database-url-env", "direct-database-url-env")
# Inputs whose value is a connection URL: `${VAR}` is percent-encoded in them.
URL_KEYS = ("database-url", "direct-database-url", "scratch-database-url")
# Inputs that belong to the fleet as a whole, never to one target.
FLEET_ONLY = (
    "command",
    "fleet-file",
    "max-parallel",
    "fail-fast",
    "shards",
    "max-parallel-jobs",
    "report-file",
    "slack-webhook-url",
    "slack-timeout",
)
URL_MAP_HINT = "a URL, or a JSON object of target name → URL"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BAD_VAR = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*\})")


class FleetError(ValueError):
    """The fleet file is not usable: one line, naming the entry; nothing has run."""


@dataclass
class Target:
    """One target: its name, wave and inputs (kebab-case name → text, resolved)."""

    name: str
    wave: int = 0
    inputs: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list, repr=False)


@dataclass
class Fleet:
    path: str
    targets: list[Target]

    @property
    def waves(self) -> list[int]:
        return sorted({t.wave for t in self.targets})

    def select(self, names: str) -> Fleet:
        """The targets named in `names` (comma- or space-separated), in the file's order."""
        wanted = [n for n in re.split(r"[\s,]+", names.strip()) if n]
        known = {t.name for t in self.targets}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise FleetError(f"not in the fleet file: {', '.join(unknown[:5])}")
        keep = set(wanted)
        return Fleet(self.path, [t for t in self.targets if t.name in keep])


def read(path: Path) -> Any:
    """The fleet file's data: JSON (`.json`, or text starting with `{`) or the YAML subset."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FleetError(f"fleet file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"cannot read the fleet file {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            return json.loads(text)
        return yamlish.loads(text)
    except json.JSONDecodeError as exc:
        raise FleetError(f"fleet file {path.name}: line {exc.lineno}: {exc.msg}") from None
    except yamlish.YamlError as exc:
        raise FleetError(f"fleet file {path.name}: {exc}") from None


def load(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    input_names: tuple[str, ...] | None = None,
    resolve: bool = True,
) -> Fleet:
    """Read and check the fleet file. `input_names`: the known inputs (every other key is
    refused; None: keys are not checked, as in the plan job). `resolve`: fill each target's
    inputs from `defaults`, `{name}`, `${VAR}` and `*-env` keys (False: structure only, no
    environment needed)."""
    data = read(path)
    env = dict(environ or {})
    where = path.name
    if not isinstance(data, dict):
        raise FleetError(f"fleet file {where}: expected a mapping with `targets` (and `defaults`)")
    extra = sorted(set(data) - {"defaults", "targets"})
    if extra:
        raise FleetError(f"fleet file {where}: unknown top-level key {extra[0]!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise FleetError(f"fleet file {where}: `defaults` must be a mapping of inputs")
    _check_keys(defaults, "defaults", input_names, allow_name=False)
    entries = data.get("targets")
    if not isinstance(entries, list) or not entries:
        raise FleetError(f"fleet file {where}: `targets` must be a non-empty list")
    if len(entries) > MAX_TARGETS:
        raise FleetError(f"fleet file {where}: more than {MAX_TARGETS} targets")
    default_wave = _wave(defaults.get("wave", 0), "defaults")
    targets: list[Target] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = f"targets[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise FleetError(f"fleet file {where}: {label}: expected a mapping with `name`")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            shown = f" {str(name)[:70]!r}" if name is not None else ""
            raise FleetError(
                f"fleet file {where}: {label}: the name{shown} must match [A-Za-z0-9_-]+ "
                "(at most 63 characters)"
            )
        label = f"{label} ({name})"
        if name in seen:
            raise FleetError(f"fleet file {where}: {label}: duplicate name")
        seen.add(name)
        _check_keys(entry, label, input_names, allow_name=True)
        wave = _wave(entry.get("wave", default_wave), label)
        target = Target(name=name, wave=wave)
        if resolve:
            try:
                target.inputs, target.secrets = _resolve(name, defaults, entry, env)
            except FleetError as exc:
                raise FleetError(f"fleet file {where}: {label}: {exc}") from None
        targets.append(target)
    return Fleet(str(path), targets)


def _wave(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WAVE:
        raise FleetError(f"{label}: wave must be a whole number from 0 to {MAX_WAVE}")
    return value


def _check_keys(
    entry: dict[str, Any], label: str, input_names: tuple[str, ...] | None, *, allow_name: bool
) -> None:
    for key, value in entry.items():
        if key == "name" and allow_name:
            continue
        if key in FLEET_ONLY:
            raise FleetError(f"{label}: {key!r} is set for the whole fleet, not in the fleet file")
        if key == "name":
            raise FleetError(f"{label}: `name` belongs to a target, not to the defaults")
        if input_names is not None and key not in FLEET_KEYS and key not in input_names:
            hint = f" (inputs are kebab-case: {key.replace('_', '-')!r})" if "_" in key else ""
            raise FleetError(f"{label}: unknown key {key!r}{hint}")
        if key == "wave":
            continue
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
        ):
            raise FleetError(f"{label}: {key!r} must be a text, number, true/false or a list")
    for key in ("database-url", "direct-database-url"):
        if key in entry and f"{key}-env" in entry:
            raise FleetError(f"{label}: set {key!r} or {key + '-env'!r}, not both")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _resolve(
    name: str, defaults: dict[str, Any], entry: dict[str, Any], env: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The target's inputs: `defaults` overridden by its own keys (a URL source of its own
    replaces the defaults' URL source), `{name}` and `${VAR}` filled in, `*-env` read."""
    merged = {k: v for k, v in defaults.items() if k != "wave"}
    for key in ("database-url", "direct-database-url"):
        if key in entry or f"{key}-env" in entry:
            merged.pop(key, None)
            merged.pop(f"{key}-env", None)
    merged.update({k: v for k, v in entry.items() if k not in ("name", "wave")})
    inputs: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in merged.items():
        if key.endswith("-env") and key in FLEET_KEYS:
            url_key = key.removesuffix("-env")
            inputs[url_key] = _from_env(name, key, _text(value).replace("{name}", name), env)
            secrets.append(inputs[url_key])
            continue
        text = _text(value)
        if _BAD_VAR.search(text):
            raise FleetError(f"{key}: `${{` must start a variable such as ${{FLEET_PASSWORD}}")
        url = key in URL_KEYS
        text = text.replace("{name}", quote(name, safe="") if url else name)
        used = _VAR.findall(text)
        for var in used:
            if not env.get(var):
                raise FleetError(f"{key}: the environment variable {var} is not set")
        text = _substitute(text, env, url)
        if url:
            secrets.append(text)
        inputs[key] = text
    if not inputs.get("database-url"):
        raise FleetError(
            "no database URL: set database-url or database-url-env in the target or `defaults`"
        )
    return inputs, [s for s in secrets if s]


def _substitute(text: str, env: Mapping[str, str], url: bool) -> str:
    return _VAR.sub(lambda m: _fill(env[m.group(1)], url), text)


def _fill(value: str, url: bool) -> str:
    """`${VAR}`'s value: percent-encoded where it lands in a URL (a password with `@`, `/`,
    `?` or `#` cannot change the host, database or options)."""
    return quote(value, safe="") if url else value


def _from_env(name: str, key: str, var: str, env: Mapping[str, str]) -> str:
    """The URL held by environment variable `var`: a URL, or a JSON object of target name →
    URL (one secret for the whole fleet)."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", var):
        raise FleetError(f"{key}: expected the name of an environment variable")
    value = env.get(var, "").strip()
    if not value:
        raise FleetError(f"{key}: the environment variable {var} is not set")
    if value.startswith("{"):
        try:
            urls = json.loads(value)
        except ValueError:
            raise FleetError(f"{key}: {var} is not valid JSON ({URL_MAP_HINT})") from None
        if not isinstance(urls, dict):
            raise FleetError(f"{key}: {var} must hold {URL_MAP_HINT}")
        url = urls.get(name)
        if not isinstance(url, str) or not url.strip():
            raise FleetError(f"{key}: {var} has no URL for this target")
        return url.strip()
    return value
