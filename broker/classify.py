"""Rule-based intent classifier: a job with no intent gets one before routing. Pure and fast
(a few regex scans over the first few KB of the prompt, ~0.1 ms).

    classify(request, labels) -> Classification(label, confidence, reasons)

Nine canonical task categories (the article's intent map) are scored from what the request
carries: tools, a JSON-schema / JSON response format (an enum in it means a label is wanted),
a system prompt that hands over context, numbered sources, code fences, the task words of the
instruction (the head and the tail of the user message weigh more than the pasted material
between them) and the shape of the question. The best category is then mapped onto the
config's own intent names through synonyms (summarisation/summarization, planning/agent-planning,
...); a category the config lacks gives way to the next best one it has.

The labelled set in tests/data/intent_prompts.jsonl measures it (tests/test_classify.py).
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Literal

import msgspec

from panelboard.schemas.chat import ChatRequest
from panelboard.schemas.config import Config
from panelboard.schemas.job import Job

CATEGORIES = (
    "extraction", "formatting", "classification", "summarization", "drafting",
    "rag-synthesis", "reasoning", "agent-planning", "code-architecture",
)

# Config intent names each category answers to, best first (compared after normalise()).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "extraction": ("extraction", "extract", "information-extraction", "entity-extraction", "parsing", "schema-mapping"),
    "formatting": ("formatting", "format", "reformatting", "reformat", "transformation", "schema-mapping"),
    "classification": ("classification", "classify", "categorization", "categorisation", "tagging", "labelling", "labeling", "moderation"),
    "summarization": ("summarization", "summarisation", "summary", "summarize", "summarise"),
    "drafting": ("drafting", "draft", "writing", "copywriting", "generation", "content"),
    "rag-synthesis": ("rag-synthesis", "rag", "synthesis", "rag-answer", "question-answering", "qa", "retrieval"),
    "reasoning": ("reasoning", "multi-step-reasoning", "analysis", "math", "problem-solving"),
    "agent-planning": ("agent-planning", "planning", "agent", "agents", "agentic", "plan"),
    "code-architecture": ("code-architecture", "architecture", "system-design", "software-architecture", "code", "coding"),
}

SCAN_CHARS = 6_000  # what is read of a long prompt: its instruction is near one end
HEAD_CHARS = 220
TAIL_CHARS = 160


class Classification(msgspec.Struct, frozen=True):
    label: str | None  # a config intent; None when no category maps onto any of the labels
    confidence: float  # softmax share of the winning category's score, 0..1
    reasons: list[str]
    category: str | None = None  # the canonical category behind the label
    scores: dict[str, float] = {}


def normalise(label: str) -> str:
    return re.sub(r"[\s_]+", "-", label.strip().lower())


def label_for(category: str, labels: Iterable[str]) -> str | None:
    """The config's name for a category, through its synonyms."""
    by_norm = {normalise(x): x for x in labels}
    for syn in SYNONYMS[category]:
        if syn in by_norm:
            return by_norm[syn]
    return None


# (category, weight, pattern, reason). Matched case-insensitively; a match in the instruction
# (head or tail of the user message) counts in full, elsewhere at BODY_WEIGHT.
_RULES_SRC: list[tuple[str, float, str, str]] = [
    # extraction: fields pulled out of given text
    ("extraction", 3.0, r"\bextract(?:s|ing)?\b", "asks to extract"),
    ("extraction", 2.5, r"\b(?:pull|grab|scrape|get)\b[^.?!\n]{0,60}\b(?:out of|from)\b", "pull/get ... from the text"),
    ("extraction", 2.0, r"\bparse\b", "asks to parse"),
    ("extraction", 2.0, r"\b(?:list|find|identify|detect)\b (?:every|all|each|any)\b", "find every/all ..."),
    ("extraction", 2.0, r"\bidentify the (?:people|names|entities|organi[sz]ations|locations|dates)", "named entities"),
    ("extraction", 1.5, r"\b(?:which|what(?:'s| is| are)?)\b[^.?!\n]{0,50}\b(?:in|mentioned in|appear in) (?:this|these|the)\b", "what ... is in this text"),
    ("extraction", 2.0, r"\bout of (?:this|these|the|that)\b|\bgive me (?:the )?[\w ]+, [\w ]+(?:, [\w ]+)+", "fields out of the text"),
    ("extraction", 1.5, r"\blist (?:the|all|every)\b", "list the ... in it"),
    ("extraction", 1.5, r"\b(?:fields?|keys?)\s*[:(]|\binto fields\b|\breturn \{", "names the fields to fill"),
    ("extraction", 1.5, r"\b(?:invoice|order|policy|tracking|flight|claim) (?:numbers?|ids?)\b|\bskus?\b|\bisbns?\b|\bdoi\b", "identifiers to find"),
    ("extraction", 1.5, r"\b(?:personally identifiable|pii)\b", "PII detection"),
    ("extraction", 1.0, r"\baction items\b|\bwhat decisions\b", "items to pull out"),
    ("extraction", 1.0, r"\bkey-value\b", "key-value pairs"),
    # formatting: the same content in another shape
    ("formatting", 3.0, r"\b(?:re)?format(?:ted|ting)?\b(?! of)", "asks to (re)format"),
    ("formatting", 2.5, r"\bconvert\b[^.?!\n]{0,40}\b(?:to|into)\b[^.?!\n]{0,20}\b(?:csv|yaml|json|markdown|table|plain text|iso|hh:mm|e\.164|line|list)", "convert to another notation"),
    ("formatting", 2.5, r"\b(?:title|sentence|kebab|snake|camel)[- ]case\b|\bcapitali[sz]ation\b|\buppercase\b|\blowercase\b", "casing"),
    ("formatting", 2.0, r"\b(?:bullet(?:ed)?|numbered) list\b|\bchecklist\b|\bmarkdown table\b|\btwo-column table\b|\bcomma-separated\b", "list/table layout"),
    ("formatting", 3.0, r"\bindent(?:ation)?\b|\bline up\b|\bpad with\b|\bwrap\b[^.?!\n]{0,20}\bcolumns\b", "whitespace layout"),
    ("formatting", 2.0, r"\bsort\b[^.?!\n]{0,30}\b(?:alphabetical|lines|by)\b|\balphabetical order\b|\bremove duplicates\b", "sorting/dedup"),
    ("formatting", 2.0, r"\biso 8601\b|\be\.164\b|\brfc ?3339\b|\bapa ?7?\b|\bhh:mm(?::ss)?\b|\.env file\b", "a named format"),
    ("formatting", 1.5, r"\bturn (?:this|these|it)\b[^.?!\n]{0,30}\binto\b|\bput (?:this|it|these)\b[^.?!\n]{0,20}\b(?:in|into)\b|\bmake (?:this|it) a\b", "turn this into ..."),
    ("formatting", 1.5, r"\bwithout changing (?:any|the) words\b|\bkeep the wording\b", "wording kept"),
    ("formatting", 1.0, r"\bproper paragraphs\b|\bchange the tense\b|\bstrip(?:ping)?\b|\bnormali[sz]e\b", "surface edits"),
    ("formatting", 1.0, r"\bslugs?\b|\bpunctuation\b", "surface edits"),
    # classification: pick a label
    ("classification", 3.0, r"\bclassif(?:y|ication)\b|\bcategori[sz]e\b|\bcategori[sz]ation\b", "asks to classify"),
    ("classification", 2.5, r"\b(?:positive|negative),? (?:or )?(?:negative|neutral)\b|\bsentiment\b", "sentiment"),
    ("classification", 2.0, r"\b(?:label|tag|bucket|flag|route) (?:this|each|these|the|whether|it)\b", "label/tag/route this"),
    ("classification", 2.0, r"\binto one of\b|\bone of:|\bwhich (?:of these )?(?:category|categories|genre|topic|team|department)\b|\bbest fits\b", "choose among categories"),
    ("classification", 2.0, r"\b(?:answer|reply|respond) (?:with )?[\"']?(?:yes|no|[A-Z]{2,})[\"']? or [\"']?(?:no|[A-Z]{2,})\b|\byes/no\b|\byes or no\b", "a closed answer set"),
    ("classification", 2.0, r"\bis (?:this|the following|it)\b[^.?!\n]{0,40}\b(?:spam|sarcastic|relevant|toxic|positive|negative|a question about)\b", "is this X?"),
    ("classification", 1.5, r"\b(?:assign|rate|determine)\b[^.?!\n]{0,30}\b(?:priority|level|toxicity|risk|whether)\b|\bdetect the emotion\b|\bwhat language is\b", "assign a level/kind"),
    ("classification", 1.5, r"\(\s*\w+(?:[ -]\w+)?\s*(?:,|/)\s*\w+(?:[ -]\w+)?\s*(?:,|/)[^)]{0,80}\)", "an option list in brackets"),
    ("classification", 1.5, r"\bcategor(?:y|ies)\b|\b(?:put|sort|bucket|group) (?:each|every)\b", "categories"),
    ("classification", 1.0, r"\b(?:bug report|feature request|standard or unusual|low, medium or high)\b", "a closed answer set"),
    # summarization: shorter version of given text
    ("summarization", 3.5, r"\bsummar(?:y|ies|i[sz]e[sd]?|i[sz]ing)\b|\btl;?dr\b|\bsum up\b", "asks for a summary"),
    ("summarization", 2.5, r"\bgist\b|\brecap\b|\bcondense\b|\bboil (?:this|it) down\b|\bshort version\b|\bdigest\b|\bin a few lines\b", "wants it shorter"),
    ("summarization", 2.0, r"\b(?:main|key|important) (?:points|takeaways|findings)\b|\btakeaways\b|\boverview\b", "key points"),
    ("summarization", 2.0, r"\b(?:shorten|compress|reduce)\b[^.?!\n]{0,40}\b(?:to|into)\b", "shorten to ..."),
    ("summarization", 1.5, r"\b(?:one|two|three|a single|\d)[- ](?:paragraph|sentence|line)s?\b|\bin (?:five|\d+) words\b|\bmax \d+ words\b|\babstract\b", "a length budget"),
    ("summarization", 2.5, r"\bmeeting minutes\b|\bminutes from\b", "minutes"),
    ("summarization", 1.0, r"\bstatus update\b|\bwhat happened\b|\bwhat changed\b", "what happened"),
    # drafting: new text
    ("drafting", 3.0, r"(?<!the )(?<!a )\b(?:write|draft|compose)\b", "asks to write"),
    ("drafting", 2.0, r"\b(?:write|draft|compose|create|give me|need|send)\b[^.?!\n]{0,50}\b(?:email|e-mail|letter|post|caption|speech|press release|limerick|poem|story|note|message|reply|copy|subject lines?|notification|auto-reply|job description|cover letter|talking points|intro|blog|description|section|answer)\b", "a piece of writing to produce"),
    ("drafting", 2.0, r"\brewrite\b[^.?!\n]{0,40}\b(?:sounds?|professional|friendl|tone|formal)\b|\bhelp me write\b", "rewrite in a tone"),
    ("drafting", 1.0, r"\b(?:warm|friendly|upbeat|polite|funny|professional) (?:tone|language)?\b|\btone\b", "tone"),
    ("drafting", 1.0, r"\b\d+[- ]?(?:words|word|characters)\b(?! or fewer)", "a length target"),
    # rag-synthesis: answer a question from supplied sources
    ("rag-synthesis", 3.0, r"\b(?:using|use|based on|from|given|according to|read)\s+(?:only\s+)?(?:the|these|this|those|our|following|retrieved|attached|below)\b[^.?!\n]{0,45}\b(?:documents?|passages?|excerpts?|snippets?|search results|sources|context|knowledge base|articles?|kb|clauses?|threads?|faq|sections?|reviews|proposals|notes and|internal docs)\b", "answer from supplied sources"),
    ("rag-synthesis", 2.5, r"\bcit(?:e|ing|ations?)\b|\bsource titles?\b|\bwhere (?:the )?sources disagree\b", "asks for citations"),
    ("rag-synthesis", 2.0, r"^\s*(?:context|sources|documents)\s*:", "starts with its context"),
    ("rag-synthesis", 2.0, r"\bquestion\s*:", "a question after its material"),
    ("rag-synthesis", 1.5, r"\bonly (?:the|these)\b|\bif the answer isn'?t there\b|\bsay you don'?t know\b", "grounded only in the material"),
    ("rag-synthesis", 1.0, r"\bthey conflict\b|\bwhich doc\b|\bcombine the info\b|\bpull it together\b", "combine sources"),
    # reasoning: work something out
    ("reasoning", 3.0, r"\bprove\b|\bsolve\b|\bprobability\b|\bstep by step\b|\breason(?:ing)? (?:it )?(?:through|carefully)\b|\bshow (?:your|the) work\b", "asks to work it out"),
    ("reasoning", 2.5, r"\bthink (?:it )?through\b|\btrade-?offs\b|\bhypothes[ie]s\b|\bdifferential\b|\bstatistically significant\b|\bestimate how many\b|\bshow your assumptions\b", "analysis"),
    ("reasoning", 2.0, r"\bhow (?:much|many|long)\b|\bwhat time\b|\bon which day\b|\bwhich is better\b|\bis it cheaper\b|\bbreakeven\b|\bwork out\b|\bminimum-cost\b|\bbest move\b", "a quantity to work out"),
    ("reasoning", 1.5, r"\bwhy would\b|\bcan we conclude\b|\bexplain\b|\bwhat are the likely\b|\bshould we\b[^?]{0,80}\bor\b|\bhelp me think\b|\bwho owns what\b|\bhow do you\b", "a why/which question"),
    ("reasoning", 1.0, r"\bis \d[\d,]* a\b|[=^]|\b\d+(?:\.\d+)?\s*%", "numbers to reason with"),
    # agent-planning: act in steps
    ("agent-planning", 3.0, r"\bplan(?:s|ning|ner)?\b(?! (?:to|for) (?:split|refactor))", "asks for a plan"),
    ("agent-planning", 2.5, r"\bstep-by-step plan\b|\b(?:sub-?tasks|workstreams|critical path|milestones|itinerary|timeline|phases)\b|\bdecompose\b|\bbreak (?:down|the goal)\b", "steps and dependencies"),
    ("agent-planning", 2.5, r"\bagents?\b|\bsub-agents\b|\btools?\b[^.?!\n]{0,10}:|\bcall tools\b|\bwhich tools\b", "an agent with tools"),
    ("agent-planning", 2.0, r"\b(?:what|which) (?:sequence of )?steps\b|\boutline (?:the|how)\b|\bin what order\b|\bwhat to do first\b|\bwho does what\b", "which steps, in which order"),
    ("agent-planning", 1.5, r"\b(?:book|buy|find|send|set up|schedule|post|log)\b[^.?!\n]{0,80}\band (?:then )?(?:book|send|email|post|log|save|chart|produce)\b", "a chain of actions"),
    ("agent-planning", 1.0, r"\bmigrat(?:e|ing)\b[^.?!\n]{0,60}\bdowntime\b|\bonboard\b|\brollout\b|\bsprint\b|\bchecklist i can hand\b", "an operational project"),
    # code-architecture: how software is put together
    ("code-architecture", 3.0, r"\barchitect(?:ure|ing)?\b|\bdesign (?:the|a|an) (?:architecture|system|service|schema|data model|api|job scheduler|ci/cd|permissions|caching|cache)\b|\bsystem design\b", "software architecture"),
    ("code-architecture", 2.5, r"\bmicroservices?\b|\bmonolith\b|\bservice boundaries\b|\bmodule layout\b|\bpackage (?:layout|structure)\b|\bdesign pattern\b|\binterfaces?\b|\bhexagonal\b|\bmvvm\b|\bplugin system\b", "services and modules"),
    ("code-architecture", 1.5, r"\b(?:postgres|kafka|redis|elasticsearch|pgvector|graphql|rest api|grpc|kubernetes|django|react(?: native)?|android|rust|typescript|golang|python|nats|lakehouse|dbt)\b", "names a software stack"),
    ("code-architecture", 2.0, r"\b(?:writes|reads|requests|jobs)/s\b|\bper day\b[^.?!\n]{0,40}\b(?:cluster|semantics)\b|\bexactly-once\b|\bat-least-once\b|\bmulti-tenant\b|\brate limiter\b|\bcircuit breakers?\b", "scale and delivery semantics"),
    ("code-architecture", 1.5, r"\brefactor(?:ing)?\b|\bclass structure\b|\bcomponent\b|\bdata model\b|\bschema\b|\bversion our\b|\bcaching strategy\b|\bsync\b", "code structure"),
    ("code-architecture", 1.0, r"\bhow (?:would|should) (?:you|we) (?:design|architect|structure|split|version|restructure)\b|\bhow should\b[^.?!\n]{0,40}\bbe split\b", "how to structure it"),
]

_RULES = [(cat, w, re.compile(rx, re.IGNORECASE | re.MULTILINE), why) for cat, w, rx, why in _RULES_SRC]
BODY_WEIGHT = 0.35
_FENCE = re.compile(r"```")
_SOURCES = re.compile(r"(?:^|\n)\s*(?:\[\d+\]|\(\d+\)|\([a-e]\)|doc(?:ument)? ?[a-z0-9]+\b[^:\n]{0,30}:|<doc\b|result \d|review \(|source \d|kb-\d+|\[clause|article \d+|section \d)", re.IGNORECASE)
_CONTEXT_SYS = re.compile(r"\b(?:context|provided|retrieved|knowledge base|sources?|clauses?|faq|documents?|excerpts?)\b", re.IGNORECASE)
_AGENT_SYS = re.compile(r"\b(?:agent|tools?|autonomous|steps)\b", re.IGNORECASE)
_CLASSIFY_SYS = re.compile(r"\b(?:classify|route|output only|label|categor)", re.IGNORECASE)
_EXTRACT_SYS = re.compile(r"\b(?:extract|extraction)\b", re.IGNORECASE)
_WRITER_SYS = re.compile(r"\b(?:copywriter|writer|voice)\b", re.IGNORECASE)


def _texts(request: ChatRequest) -> tuple[str, str]:
    system = " ".join(m.text() for m in request.messages if m.role in ("system", "developer"))
    users = [m.text() for m in request.messages if m.role == "user"]
    return system[:SCAN_CHARS], (users[-1] if users else "")[:SCAN_CHARS]


_MATERIAL_START = re.compile(r"\n|:\s*['\"\u2018\u201c]")


def _split(user: str) -> tuple[str, str, str]:
    """(instruction head, pasted material, instruction tail). The head ends where the material
    starts (the first line break, or a quote after a colon); the tail is a short last line."""
    cut = min(len(user), HEAD_CHARS)
    m = _MATERIAL_START.search(user, 12, cut)
    if m:
        cut = m.start()
    head, rest = user[:cut], user[cut:]
    tail = ""
    if "\n" in rest.strip():
        last = rest.rstrip().rsplit("\n", 1)[1]
        if len(last) <= TAIL_CHARS:
            tail, rest = last, rest.rstrip()[: -len(last)]
    return head, rest, tail


def _schema_has_enum(obj: object, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(obj, dict):
        return "enum" in obj or any(_schema_has_enum(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return any(_schema_has_enum(v, depth + 1) for v in obj)
    return False


def classify(request: ChatRequest, labels: list[str]) -> Classification:
    """The intent a request most looks like, among `labels` (the config's intent names)."""
    scores = dict.fromkeys(CATEGORIES, 0.0)
    why: dict[str, list[str]] = {c: [] for c in CATEGORIES}

    def add(cat: str, w: float, reason: str) -> None:
        scores[cat] += w
        why[cat].append(f"{reason} (+{w:g})")

    system, user = _texts(request)
    head, body, tail = _split(user)

    # What the request carries, beyond its words.
    if request.tools:
        add("agent-planning", 4.0, f"carries {len(request.tools)} tool(s)")
    rf = request.response_format or {}
    if rf.get("type") in ("json_schema", "json_object"):
        if _schema_has_enum(rf):
            add("classification", 4.0, "JSON-schema output with an enum")
        else:
            add("extraction", 1.5, f"{rf.get('type')} output")
            add("formatting", 1.0, f"{rf.get('type')} output")
    if system:
        if _CONTEXT_SYS.search(system) and len(system) > 120:
            add("rag-synthesis", 3.0, "system prompt hands over context")
        if _AGENT_SYS.search(system):
            add("agent-planning", 2.0, "system prompt sets up an agent")
        if _CLASSIFY_SYS.search(system):
            add("classification", 2.5, "system prompt asks for a label")
        if _EXTRACT_SYS.search(system):
            add("extraction", 2.5, "system prompt asks for extraction")
        if _WRITER_SYS.search(system):
            add("drafting", 2.5, "system prompt sets a writer's voice")
    n_sources = len(_SOURCES.findall(user))
    if n_sources >= 2:
        add("rag-synthesis", 1.0 + min(n_sources, 4) * 0.5, f"{n_sources} numbered sources in the prompt")
    if _FENCE.search(user):
        add("code-architecture", 1.0, "contains a code fence")

    # The instruction's words: head and tail in full, the pasted middle discounted.
    for cat, w, rx, reason in _RULES:
        if rx.search(head) or (tail and rx.search(tail)):
            add(cat, w, reason)
        elif body and rx.search(body):
            add(cat, round(w * BODY_WEIGHT, 2), reason + " (in the body)")

    # Shape: short questions with no material are usually things to work out.
    if len(user) < 400 and user.rstrip().endswith("?") and not n_sources:
        add("reasoning", 0.5, "a short question")
    if len(user) > 600 and max(scores.values()) < 3.0:
        add("summarization", 1.0, "long pasted text with a short instruction")

    ranked = sorted(CATEGORIES, key=lambda c: (-scores[c], CATEGORIES.index(c)))
    if scores[ranked[0]] == 0.0:
        ranked = ["drafting", *[c for c in ranked if c != "drafting"]]
        why["drafting"].append("no task signal: taken as open-ended writing")
    reasons: list[str] = []
    for cat in ranked:
        label = label_for(cat, labels)
        if label is not None:
            total = sum(math.exp(s) for s in scores.values())
            conf = math.exp(scores[cat]) / total
            reasons = [*reasons, *why[cat]]
            return Classification(label=label, confidence=round(conf, 3), reasons=reasons, category=cat,
                                  scores={c: round(s, 2) for c, s in scores.items() if s})
        if scores[cat]:
            reasons.append(f"looks like {cat} (score {scores[cat]:g}) but no intent in the config is a {cat} intent")
    return Classification(label=None, confidence=0.0, reasons=[*reasons, "no config intent matches any task category"],
                          scores={c: round(s, 2) for c, s in scores.items() if s})


IntentSource = Literal["given", "default", "classified", "none"]


def intent_for(job: Job, cfg: Config) -> tuple[str | None, IntentSource, Classification | None]:
    """(intent, source, classification): the job's own intent ("given"), else the config's
    default_intent ("default"), else the classifier's pick ("classified"), else (None, "none",
    ...) and the broker rejects the job as today. An explicit default wins over a guess, so
    configs that set one behave as before; `classifier: off` turns guessing off."""
    if job.intent:
        return job.intent, "given", None
    if cfg.default_intent:
        return cfg.default_intent, "default", None
    if cfg.classifier == "off":
        return None, "none", None
    c = classify(job.request, list(cfg.intents))
    return (c.label, "classified", c) if c.label else (None, "none", c)
