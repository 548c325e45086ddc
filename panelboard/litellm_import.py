"""`panelboard config import-litellm config.yaml [-o out.yaml]`: a LiteLLM proxy config
(model_list + router_settings + fallbacks) into a panelboard config, so a LiteLLM user moves
with one command.

    LiteLLM                                   panelboard
    model_list[].model_name  (a group)        a tier of that name, and an intent of that name
    litellm_params.model  prefix/model        a provider (from the prefix and api_base) + a catalog model
    several deployments of one model_name     links of one `group`, ordered by the tier's strategy
    router_settings.routing_strategy          tiers' `strategy` (usage-based-routing-v2 -> usage-based, ...)
    fallbacks / default_fallbacks /           the fallback group's deployments appended to the chain
      context_window_fallbacks
    num_retries                               retry_policy.max_retries
    timeout (per deployment, seconds)         the link's `timeout>Nms` trigger
    api_key: os.environ/NAME                  api_key: env:NAME (a literal key is never copied)
    input/output_cost_per_token, else a       input_per_m / output_per_m; unknown prices are 0 and
      built-in table                            flagged PRICE UNKNOWN in a comment
    "# a, b, c -> group" comment lines        intents (the article's app-level intent map)

convert(text) -> Conversion(yaml, warnings). The output is written as text, with comments,
and is checked by panelboard.config.parse before it is returned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import yaml

from panelboard.config import ConfigError, parse


@dataclass(frozen=True)
class Family:
    name: str  # panelboard provider name
    api: str  # openai | anthropic
    base_url: str | None
    key_env: str
    model_prefix: str = ""  # what LiteLLM puts in front of a bare model id for this provider


# LiteLLM provider prefixes panelboard's two API families can serve.
FAMILIES: dict[str, Family] = {
    "openai": Family("openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "text-completion-openai": Family("openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": Family("anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "fireworks_ai": Family("fireworks", "openai", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY", "accounts/fireworks/models/"),
    "together_ai": Family("together", "openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "deepinfra": Family("deepinfra", "openai", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    "novita": Family("novita", "openai", "https://api.novita.ai/v3/openai", "NOVITA_API_KEY"),
    "groq": Family("groq", "openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": Family("mistral", "openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "deepseek": Family("deepseek", "openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "openrouter": Family("openrouter", "openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "xai": Family("xai", "openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    "perplexity": Family("perplexity", "openai", "https://api.perplexity.ai", "PERPLEXITYAI_API_KEY"),
    "cerebras": Family("cerebras", "openai", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    "hosted_vllm": Family("vllm", "openai", None, "VLLM_API_KEY"),
    "openai_like": Family("openai-like", "openai", None, "OPENAI_LIKE_API_KEY"),
}
# Hosts of OpenAI-compatible endpoints reached through LiteLLM's generic `openai/` + api_base.
KNOWN_HOSTS = {"novita.ai": "novita", "deepinfra.com": "deepinfra", "fireworks.ai": "fireworks", "together.xyz": "together",
               "groq.com": "groq", "mistral.ai": "mistral", "deepseek.com": "deepseek", "openrouter.ai": "openrouter"}

# USD per million tokens (input, output, quantization). The article's figures and the list
# prices of examples/real.yaml; anything else is a placeholder the user must fill in.
PRICES: dict[tuple[str | None, str], tuple[float, float, str | None]] = {
    ("novita", "llama-3.3-70b"): (0.13, 0.39, "fp8"),
    ("deepinfra", "llama-3.3-70b"): (0.23, 0.40, "fp8"),
    ("fireworks", "llama-3.3-70b"): (0.90, 0.90, "bf16"),  # (article) $0.90/M flat
    ("together", "llama-3.3-70b"): (1.04, 1.04, "bf16"),  # (article) $1.04/M each way
    ("fireworks", "deepseek-v4-pro"): (1.20, 4.80, "bf16"),
    ("together", "deepseek-v4-pro"): (1.50, 6.00, "bf16"),
    (None, "claude-fable-5"): (10.0, 50.0, None),  # (article)
    (None, "claude-opus-4.8"): (5.0, 25.0, None),  # (article)
    (None, "gpt-5.5"): (5.0, 30.0, None),  # (article)
}

STRATEGY = {
    "simple-shuffle": "simple-shuffle",
    "least-busy": "least-busy",
    "usage-based-routing": "usage-based",
    "usage-based-routing-v2": "usage-based",
    "latency-based-routing": "latency-based",
    "cost-based-routing": "cost-based",
}

_INTENT_LINE = re.compile(r"^\s*#\s*([A-Za-z][\w ,/\-]*?)\s*(?:->|→|=>)\s*([\w.\-]+)\s*$")
_NAME_OK = re.compile(r"^[A-Za-z0-9_./-]+$")


class ImportError_(ValueError):
    """The LiteLLM file cannot be converted (named for what it is, not the builtin)."""


@dataclass
class Conversion:
    yaml: str
    warnings: list[str] = field(default_factory=list)


def _q(v: Any) -> str:
    """A YAML scalar: JSON is YAML, and JSON strings are never read as booleans or numbers."""
    return json.dumps(v) if isinstance(v, str) else ("null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v))


def _key(s: str) -> str:
    return s if _NAME_OK.match(s) and not s[0].isdigit() else json.dumps(s)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-").lower() or "provider"


def _host_name(api_base: str) -> str:
    """A provider name for an OpenAI-compatible api_base: novita for api.novita.ai, local for
    a loopback or bare-IP address, else the host's first meaningful label."""
    host = urlparse(api_base).hostname or api_base
    known = next((n for h, n in KNOWN_HOSTS.items() if host == h or host.endswith("." + h)), None)
    if known:
        return known
    if host == "localhost" or re.fullmatch(r"[\d.]+|\[?[0-9a-f:]+\]?", host):
        return "local"
    labels = [x for x in host.split(".") if x not in ("api", "www")]
    return _slug(labels[0] if labels else host)


def model_key(model_id: str) -> str:
    """A provider-independent short name: meta-llama/Llama-3.3-70B-Instruct -> llama-3.3-70b."""
    k = model_id.lower().rsplit("/", 1)[-1]
    k = re.sub(r"v(\d+)p(\d+)", r"\1.\2", k)  # fireworks' llama-v3p3-70b
    k = re.sub(r"^llama-(\d)", r"llama-\1", k)
    k = re.sub(r"(-instruct|-turbo|-chat)+$", "", k)
    k = re.sub(r"^(claude-[a-z]+-\d+)-(\d+)$", r"\1.\2", k)  # claude-opus-4-8 -> claude-opus-4.8
    return k


def _env_ref(value: Any, default_env: str, where: str, warnings: list[str]) -> str:
    if isinstance(value, str) and value.startswith("os.environ/"):
        return "env:" + value.removeprefix("os.environ/")
    if isinstance(value, str) and value.startswith("env:"):
        return value
    if value:
        warnings.append(f"{where}: a literal api_key was in the LiteLLM config; it is not copied: export it as {default_env}")
    return f"env:{default_env}"


@dataclass
class _Provider:
    name: str
    api: str
    base_url: str
    api_key: str | None
    comments: list[str] = field(default_factory=list)
    max_concurrency: int | None = None
    timeout_ms: int | None = None


@dataclass
class _Model:
    name: str
    provider: str
    model: str
    prices: tuple[float, float, str | None] | None
    comment: str


@dataclass
class _Deployment:
    group: str
    model: str  # catalog name
    timeout_s: float | None
    weight: float | None


def convert(text: str, source: str = "<litellm config>") -> Conversion:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ImportError_(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_list"), list) or not raw["model_list"]:
        raise ImportError_(f"{source}: no model_list: this does not look like a LiteLLM proxy config")
    warnings: list[str] = []
    router = raw.get("router_settings") or {}
    lsettings = raw.get("litellm_settings") or {}
    providers: dict[str, _Provider] = {}
    models: dict[str, _Model] = {}
    deployments: list[_Deployment] = []

    for i, entry in enumerate(raw["model_list"]):
        where = f"model_list[{i}]"
        if not isinstance(entry, dict) or not entry.get("model_name") or not isinstance(entry.get("litellm_params"), dict):
            raise ImportError_(f"{source}: {where} needs model_name and litellm_params")
        group = str(entry["model_name"])
        lp = entry["litellm_params"]
        info = entry.get("model_info") or {}
        full = str(lp.get("model") or "")
        if "/" not in full:
            prefix, model_id = "openai", full  # LiteLLM's default for a bare id is OpenAI
        else:
            prefix, model_id = full.split("/", 1)
        if not model_id:
            raise ImportError_(f"{source}: {where}.litellm_params.model is empty")
        fam = FAMILIES.get(prefix)
        api_base = lp.get("api_base") or lp.get("base_url")
        comments: list[str] = []
        if fam is None:
            warnings.append(f"{where}: LiteLLM provider {prefix!r} is not one of panelboard's API families (openai, anthropic); "
                            "written as an OpenAI-compatible provider: check its base_url")
            comments.append(f"LiteLLM provider {prefix!r}: assumed OpenAI-compatible, check base_url")
            fam = Family(_slug(prefix), "openai", None, f"{_slug(prefix).upper().replace('-', '_')}_API_KEY")
        name = fam.name
        if api_base and api_base != fam.base_url and prefix in ("openai", "openai_like", "hosted_vllm", "text-completion-openai"):
            name = _host_name(str(api_base))
        base_url = str(api_base or fam.base_url or "")
        if not base_url:
            warnings.append(f"{where}: no api_base for {prefix!r}; set providers.{name}.base_url")
            base_url = "https://CHANGE-ME.invalid/v1"
            comments.append("no api_base in the LiteLLM config: set base_url")
        default_env = f"{name.upper().replace('-', '_')}_API_KEY" if name != fam.name else fam.key_env
        keyless = not lp.get("api_key") and (prefix not in FAMILIES or name == "local")  # LiteLLM sent none either
        key = None if keyless else _env_ref(lp.get("api_key"), default_env, where, warnings)
        if not lp.get("api_key") and prefix == "openai" and name != "openai":
            comments.append(f"LiteLLM would have sent OPENAI_API_KEY to this api_base; panelboard reads {default_env}")
        p = providers.get(name)
        if p is None:
            p = providers[name] = _Provider(name, fam.api, base_url, key, comments)
        elif p.base_url != base_url:
            name = f"{name}-{len([x for x in providers if x.startswith(name)]) + 1}"
            p = providers[name] = _Provider(name, fam.api, base_url, key, comments)
        if lp.get("max_parallel_requests"):
            p.max_concurrency = max(p.max_concurrency or 0, int(lp["max_parallel_requests"]))

        wire_model = model_id if not fam.model_prefix or model_id.startswith(fam.model_prefix.split("/")[0]) else fam.model_prefix + model_id
        short = model_key(model_id)
        catalog = f"{name}/{short}"
        if catalog in models and models[catalog].model != wire_model:
            catalog = f"{name}/{_slug(model_id)}"
        if catalog not in models:
            in_tok = info.get("input_cost_per_token", lp.get("input_cost_per_token"))
            out_tok = info.get("output_cost_per_token", lp.get("output_cost_per_token"))
            if in_tok is not None and out_tok is not None:
                prices: tuple[float, float, str | None] | None = (round(float(in_tok) * 1e6, 6), round(float(out_tok) * 1e6, 6), None)
                note = "price: from the LiteLLM config"
            else:
                prices = PRICES.get((name, short)) or PRICES.get((None, short))
                note = "price: panelboard's built-in table" if prices else "PRICE UNKNOWN: placeholder 0, set input_per_m and output_per_m"
                if prices is None:
                    warnings.append(f"{where}: no price known for {full!r}; {catalog} is written with placeholder prices (0)")
            models[catalog] = _Model(catalog, name, wire_model, prices, note)
        timeout = lp.get("timeout") or lp.get("stream_timeout")
        weight = lp.get("weight")
        deployments.append(_Deployment(group, catalog, float(timeout) if timeout else None, float(weight) if weight is not None else None))

    by_group: dict[str, list[_Deployment]] = {}
    for d in deployments:
        by_group.setdefault(d.group, []).append(d)

    def fallback_map(key: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for src in (lsettings.get(key), router.get(key)):
            for item in src or []:
                if isinstance(item, dict):
                    for g, fbs in item.items():
                        out.setdefault(str(g), []).extend(str(x) for x in (fbs if isinstance(fbs, list) else [fbs]))
        return out

    fallbacks = fallback_map("fallbacks")
    ctx_fallbacks = fallback_map("context_window_fallbacks")
    defaults = [str(x) for x in (lsettings.get("default_fallbacks") or router.get("default_fallbacks") or [])]
    for table in (fallbacks, ctx_fallbacks):
        for g, fbs in table.items():
            for fb in [g, *fbs]:
                if fb not in by_group:
                    warnings.append(f"fallbacks: {fb!r} is not a model_name of the model_list; left out")
    strategy_raw = router.get("routing_strategy")
    strategy = STRATEGY.get(str(strategy_raw)) if strategy_raw else None
    if strategy_raw and strategy is None:
        warnings.append(f"router_settings.routing_strategy {strategy_raw!r} has no panelboard equivalent; cost-latency is used")
    retries = router.get("num_retries", lsettings.get("num_retries"))
    timeout_s = router.get("timeout", lsettings.get("request_timeout"))
    if timeout_s:
        for p in providers.values():
            p.timeout_ms = int(float(timeout_s) * 1000)

    out = [f"# Converted from the LiteLLM config {source} by `panelboard config import-litellm`.",
           "# Check every base_url, model id and price before use; keys are read from the environment variables named here."]
    if strategy_raw:
        out.append(f"# router_settings.routing_strategy: {strategy_raw} -> strategy: {strategy or 'cost-latency'} "
                   "(orders the deployments of one model_name; see broker/strategies.py)")
    out += ["", "providers:"]
    for p in providers.values():
        fields = [f"api: {p.api}", f"base_url: {_q(p.base_url)}"] + ([f"api_key: {_q(p.api_key)}"] if p.api_key else [])
        if p.max_concurrency:
            fields.append(f"max_concurrency: {p.max_concurrency}")
        if p.timeout_ms:
            fields.append(f"timeout_ms: {p.timeout_ms}")
        out.append(f"  {_key(p.name)}: {{{', '.join(fields)}}}" + (f"  # {'; '.join(p.comments)}" if p.comments else ""))
    out += ["", "models:"]
    for m in models.values():
        pin, pout, quant = m.prices or (0.0, 0.0, None)
        fields = [f"provider: {_key(m.provider)}", f"model: {_q(m.model)}", f"input_per_m: {pin!r}", f"output_per_m: {pout!r}"]
        if quant:
            fields.append(f"quantization: {quant}")
        out.append(f"  {_key(m.name)}: {{{', '.join(fields)}}}  # {m.comment}")
    out += ["", "tiers:"]
    for g, deps in by_group.items():
        out.append(f"  {_key(g)}:")
        if strategy and len(deps) > 1:
            out.append(f"    strategy: {strategy}")
        out.append("    fallbacks:")
        seen: set[str] = set()
        chain_groups = [g, *fallbacks.get(g, defaults if g not in fallbacks else []), *ctx_fallbacks.get(g, [])]
        for cg in chain_groups:
            members = [d for d in by_group.get(cg, []) if d.model not in seen]
            for d in members:
                seen.add(d.model)
                fields = [f"model: {_key(d.model)}"]
                on = ["429", "5xx", f"timeout>{int(d.timeout_s * 1000)}ms" if d.timeout_s else "timeout"]
                fields.append(f"on: {json.dumps(on)}")
                if len(members) > 1:
                    fields.append(f"group: {_q(cg)}")
                if d.weight is not None and len(members) > 1:
                    fields.append(f"weight: {d.weight!r}")
                why = "" if cg == g else (f"  # context-window fallback {cg}" if cg in ctx_fallbacks.get(g, []) else f"  # fallback {cg}")
                out.append(f"      - {{{', '.join(fields)}}}{why}")
        if retries is not None:
            out.append(f"    retry_policy: {{max_retries: {int(retries)}, backoff: exponential}}")

    intents: dict[str, str] = {}
    for line in text.splitlines():
        hit = _INTENT_LINE.match(line)
        if hit and hit.group(2) in by_group:
            for word in hit.group(1).split(","):
                name = _slug(word.strip())
                if name:
                    intents.setdefault(name, hit.group(2))
    out += ["", "# Every model_name is also an intent, so a job can ask for the group LiteLLM callers named."]
    if intents:
        out.append("# The rest is the app-level intent map from the comments of the LiteLLM file.")
    out.append("intents:")
    for g in by_group:
        out.append(f"  {_key(g)}: {_key(g)}")
    for name, g in intents.items():
        if name not in by_group:
            out.append(f"  {_key(name)}: {_key(g)}")
    result = "\n".join(out) + "\n"
    try:
        parse(result, "the converted config")
    except ConfigError as e:
        raise ImportError_(f"{source}: the conversion does not load ({e}); please report this with the LiteLLM file") from None
    return Conversion(result, warnings)
