"""Load the YAML (or JSON) config into typed Structs, with errors that name the field and line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from panelboard.broker import health, strategies
from panelboard.broker.routing import PRECISION, precise_enough
from panelboard.schemas import triggers
from panelboard.schemas.config import Config, Model, Provider, Tier

_ORDINALS = ("primary", "secondary", "tertiary", "quaternary", "quinary")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # the repository's examples (not installed)
# Package data, so that an installed wheel runs `panelboard demo` anywhere; examples/mock.yaml links here.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "mock.yaml"


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: the article's `on:` trigger lists must not turn into `True:`."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def expand_env(text: str) -> str:
    """${VAR} and ${VAR:-default}, so one file serves a laptop and a deployment."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise ConfigError(f"config uses ${{{m.group(1)}}} but it is not set; export it or write ${{{m.group(1)}:-default}}")
            return m.group(2)
        return value

    return _ENV_RE.sub(sub, text)


def _normalise(raw: Any) -> Any:
    """Accept the article's fallback JSON as written: {"primary": "novita/..."} links."""
    tiers = raw.get("tiers") if isinstance(raw, dict) else None
    if isinstance(tiers, dict):
        for tier in tiers.values():
            if isinstance(tier, dict) and isinstance(tier.get("fallbacks"), list):
                for link in tier["fallbacks"]:
                    if isinstance(link, dict) and "model" not in link:
                        for word in _ORDINALS:
                            if word in link:
                                link["model"] = link.pop(word)
                                break
    return raw


def _line_of(node: yaml.Node | None, path: str) -> int | None:
    """Walk a composed YAML tree along msgspec's `$.a.b[0]` path to the offending line."""
    if node is None:
        return None
    parts = re.findall(r"\.([^.\[]+)|\[(\d+)\]", path.removeprefix("$"))
    line = node.start_mark.line
    for key, index in parts:
        if key and isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
        elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            nxt = node.value[int(index)]
        else:
            nxt = None
        if nxt is None:
            break
        node, line = nxt, nxt.start_mark.line
    return line + 1


_SECTIONS = {"providers": Provider, "models": Model, "tiers": Tier}


def _pinpoint(raw: dict[str, Any], msg: str) -> str:
    """msgspec writes `$.providers[...]` for dict keys; find which entry it meant."""
    m = re.search(r"at `\$\.(\w+)\[\.\.\.\]([^`]*)`", msg)
    if not m or m.group(1) not in _SECTIONS or not isinstance(raw.get(m.group(1)), dict):
        return msg
    for key, value in raw[m.group(1)].items():
        try:
            msgspec.convert(value, _SECTIONS[m.group(1)])
        except msgspec.ValidationError as e:
            inner = re.search(r"^(.*?)(?: - at `\$([^`]*)`)?$", str(e))
            assert inner is not None
            return f"{inner.group(1)} - at `$.{m.group(1)}.{key}{inner.group(2) or ''}`"
    return msg


def _yaml_problem(e: yaml.YAMLError, source: str) -> str:
    """PyYAML names a string it was given "<unicode string>": name the file instead."""
    for mark in (getattr(e, "context_mark", None), getattr(e, "problem_mark", None)):
        if mark is not None:
            mark.name = source
    return str(e)


def parse(text: str, source: str = "<config>") -> Config:
    text = expand_env(text)
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
        tree = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e, source)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with providers, models, tiers and intents")
    try:
        cfg = msgspec.convert(_normalise(raw), Config)
    except msgspec.ValidationError as e:
        msg = _pinpoint(raw, str(e))
        m = re.search(r"at `(\$[^`]*)`", msg)
        where = ""
        if m:
            line = _line_of(tree, m.group(1))
            where = f" (line {line})" if line else ""
        raise ConfigError(f"{source}{where}: {msg}") from None
    problems = check(cfg)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def check(cfg: Config) -> list[str]:
    """Cross-references msgspec cannot see: every name used must be defined."""
    out: list[str] = []
    for name, p in cfg.providers.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            out.append(f"providers.{name}: names become NATS subject tokens; use letters, digits, - and _")
        if p.max_concurrency < 1:
            out.append(f"providers.{name}.max_concurrency must be >= 1")
        if p.api_key and not p.api_key.startswith("env:"):
            out.append(f"providers.{name}.api_key must reference an environment variable as env:NAME, never the key itself")
    for name, m in cfg.models.items():
        if m.provider not in cfg.providers:
            out.append(f"models.{name}.provider: unknown provider {m.provider!r} (known: {', '.join(cfg.providers)})")
    for name, t in cfg.tiers.items():
        if not t.fallbacks:
            out.append(f"tiers.{name}.fallbacks is empty; list at least one model")
        for i, link in enumerate(t.fallbacks):
            if link.model not in cfg.models:
                out.append(f"tiers.{name}.fallbacks[{i}].model: unknown model {link.model!r}; add it under models")
            for trig in link.on:
                if triggers.parse(trig) is None:
                    out.append(f"tiers.{name}.fallbacks[{i}].on: trigger {trig!r} is not one of {triggers.FORMS}")
        if t.shadow is not None:
            if t.shadow.tier not in cfg.tiers:
                out.append(f"tiers.{name}.shadow.tier: unknown tier {t.shadow.tier!r} (known: {', '.join(cfg.tiers)})")
            if not 0.0 <= t.shadow.sample <= 1.0:
                out.append(f"tiers.{name}.shadow.sample must be between 0 and 1 (a share of jobs), not {t.shadow.sample}")
        if t.min_precision is not None:
            if t.min_precision.lower() not in PRECISION:
                out.append(f"tiers.{name}.min_precision: {t.min_precision!r} is not one of {', '.join(PRECISION)}")
            elif not any(precise_enough(cfg.models[lk.model].quantization, t.min_precision) for lk in t.fallbacks if lk.model in cfg.models):
                out.append(f"tiers.{name}.min_precision {t.min_precision} leaves no hop in its chain; lower it or add a full-precision model")
    for intent, tier in cfg.intents.items():
        if tier not in cfg.tiers:
            out.append(f"intents.{intent}: unknown tier {tier!r} (known: {', '.join(cfg.tiers)})")
    if cfg.default_intent is not None and cfg.default_intent not in cfg.intents:
        out.append(f"default_intent: {cfg.default_intent!r} is not in intents")
    if cfg.router is not None:
        for side in ("cheap", "strong"):
            if getattr(cfg.router, side) not in cfg.tiers:
                out.append(f"router.{side}: unknown tier {getattr(cfg.router, side)!r} (known: {', '.join(cfg.tiers)})")
        if cfg.router.cheap == cfg.router.strong:
            out.append("router.cheap and router.strong name the same tier; the router chooses between two tiers")
        if not os.path.isfile(cfg.router.model):
            out.append(f"router.model: no file {cfg.router.model!r} (relative to {os.getcwd()}); train one with `panelboard eval train`")

    return out + health.check(cfg) + strategies.check(cfg)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    path = Path(path or os.environ.get("PANELBOARD_CONFIG") or DEFAULT_CONFIG)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}; pass --config or set PANELBOARD_CONFIG") from None
    return parse(text, str(path))


def provider_key(cfg: Config, provider: str) -> str | None:
    ref = cfg.providers[provider].api_key
    if not ref:
        return None
    name = ref.removeprefix("env:")
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"providers.{provider}.api_key: environment variable {name} is not set; export it before starting the worker")
    return value
