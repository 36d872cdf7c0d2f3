"""Constitutions: YAML files of principles that researchers edit, validated strictly."""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory.errors import InputError
from factory.limits import limits
from factory.yamlfile import load_yaml, read_text

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v.strip()


def _bounded(v: object) -> object:
    """A text that goes into every prompt (and the dataset card): at most FACTORY_MAX_PRINCIPLE_CHARS."""
    cap = limits().principle_chars
    if isinstance(v, str) and len(v) > cap:
        raise ValueError(f"{len(v)} characters, over the limit of {cap} (FACTORY_MAX_PRINCIPLE_CHARS)")
    return v


class Principle(Strict):
    id: str = Field(pattern=ID_PATTERN, description="stable id, recorded in every row it shaped")
    critique: str = Field(description="the request that asks for a critique of a response")
    revision: str = Field(description="the request that asks for a rewrite addressing the critique")
    judge: str | None = Field(default=None, description="optional instruction for a judge comparing two answers")

    _blank = field_validator("critique", "revision")(_not_blank)
    _size = field_validator("critique", "revision", "judge", mode="before")(_bounded)

    def digest(self) -> str:
        return _digest(self.model_dump())


class Example(Strict):
    """One worked critique-and-revise example shown to the model as few-shot context.

    Give `principle` (an id) or both `critique_request` and `revision_request` verbatim.
    An example whose revision equals its response shows that no change was needed.
    """

    prompt: str
    response: str
    principle: str | None = None
    critique_request: str | None = None
    revision_request: str | None = None
    critique: str
    revision: str

    _blank = field_validator("prompt", "response", "critique", "revision")(_not_blank)
    _size = field_validator("prompt", "response", "critique", "revision", "critique_request", "revision_request",
                            mode="before")(_bounded)

    @model_validator(mode="after")
    def _one_form(self) -> Example:
        verbatim = self.critique_request is not None and self.revision_request is not None
        if (self.principle is None) == (not verbatim):
            raise ValueError("give either 'principle' or both 'critique_request' and 'revision_request'")
        return self

    @property
    def needs_change(self) -> bool:
        return self.revision.strip() != self.response.strip()


class Constitution(Strict):
    name: str = Field(pattern=ID_PATTERN)
    version: str
    description: str
    principles: list[Principle] = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list, description="few-shot critique-and-revise examples")

    @model_validator(mode="after")
    def _check_ids(self) -> Constitution:
        seen: set[str] = set()
        for p in self.principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        for i, ex in enumerate(self.examples):
            if ex.principle is not None and ex.principle not in seen:
                raise ValueError(f"examples[{i}] names unknown principle {ex.principle!r}")
        return self

    @cached_property
    def digest(self) -> str:
        """Content hash: changes with any principle or example, not with comments or layout."""
        return _digest(self.model_dump())

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def principle(self, pid: str) -> Principle:
        return next(p for p in self.principles if p.id == pid)

    def requests(self, ex: Example) -> tuple[str, str]:
        """The critique and revision requests an example answers."""
        if ex.principle is not None:
            p = self.principle(ex.principle)
            return p.critique, p.revision
        return ex.critique_request or "", ex.revision_request or ""

    def warnings(self) -> list[str]:
        out = []
        if not self.examples:
            out.append("no few-shot examples: small models confuse critique and revision without them")
        elif all(ex.needs_change for ex in self.examples):
            out.append("no example shows an answer that needed no change (revision equal to response)")
        return out


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def load_constitution(path: str | Path) -> Constitution:
    return load_yaml(path, Constitution)


DERIVED_JUDGE = "Choose the answer that better meets the standard of this critique: {critique}"


def sanitise_id(text: str, fallback: str = "imported") -> str:
    """`text` as an id (ID_PATTERN): lower case, every run of other characters one hyphen."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_") or fallback


def import_llm_swarm(path: str | Path, name: str) -> dict:
    """Convert llm-swarm's CAI JSON (`{"constitutions": [{critic, revision}], "system_chat": [...]}`).

    `system_chat` holds few-shot conversations, one list each (or one flat list of 6-turn ones): a
    conversation of user and assistant turns, then critique request, critique, revision request and
    revision. A conversation of more than one exchange (llm-swarm's Grok file has an 8-turn example)
    becomes one example whose prompt carries the earlier turns as "Human:"/"Assistant:" lines before
    the last request. Each principle gets a judge text derived from its critique request, so a
    pipeline with a judge accepts the file; the description says so, for a person to review them.
    """
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(path, f"malformed JSON: {e.msg}", line=e.lineno) from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # the rest of the parser's errors: a 5000-digit number, deep nesting
        raise InputError(path, f"malformed JSON: {'nested too deeply' if isinstance(e, RecursionError) else e}") from None
    if isinstance(data, list):  # the bare list form: principles only
        data = {"constitutions": data}
    if not isinstance(data, dict) or not isinstance(data.get("constitutions"), list):
        raise InputError(path, "expected an object with a 'constitutions' list", field="constitutions")
    principles = []
    for i, c in enumerate(data["constitutions"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) and c[k].strip() for k in ("critic", "revision")):
            raise InputError(path, "each entry needs 'critic' and 'revision' texts", field=f"constitutions.{i}")
        principles.append({"id": f"p{i + 1:02d}", "critique": c["critic"], "revision": c["revision"],
                           "judge": DERIVED_JUDGE.format(critique=c["critic"].strip())})
    by_text = {p["critique"].strip(): p["id"] for p in principles}
    examples = [_example(path, k, conv, by_text) for k, conv in enumerate(_conversations(path, data.get("system_chat")))]
    out = {
        "name": sanitise_id(name),
        "version": "1.0.0",
        "description": f"Imported from {path.name} (llm-swarm CAI format). The judge texts are derived from "
                       "each principle's critique request by `factory constitution import`: review them.",
        "principles": principles,
        "examples": examples,
    }
    try:
        Constitution.model_validate(out)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(path, f"{err['msg']}", field=".".join(map(str, err["loc"]))) from None
    return out


def _conversations(path: Path, chat: object) -> list[list]:
    """One list of messages per example: the nested form as it is, the flat form cut every 6 turns."""
    if chat is None:
        return []
    if not isinstance(chat, list):
        raise InputError(path, "expected a list of conversations", field="system_chat")
    if all(isinstance(conv, list) for conv in chat):
        return chat
    if len(chat) % 6:
        raise InputError(path, f"{len(chat)} messages is not a whole number of 6-turn examples; give longer "
                               "examples in the nested form (one list of messages per example)", field="system_chat")
    return [chat[k:k + 6] for k in range(0, len(chat), 6)]


def _example(path: Path, k: int, conv: list, by_text: dict[str, str]) -> dict:
    where = f"system_chat.{k}"
    if len(conv) < 6 or len(conv) % 2:
        raise InputError(path, f"{len(conv)} messages: an example is an even number of turns, at least 6 (the "
                               "conversation, then critique request, critique, revision request, revision)", field=where)
    turns = []
    for i, m in enumerate(conv):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InputError(path, "each message needs a 'content' text", field=f"{where}.{i}")
        if m.get("role", want) != want:
            raise InputError(path, f"expected a {want} turn, got {m.get('role')!r} (turns alternate, user first)",
                             field=f"{where}.{i}.role")
        turns.append(m["content"])
    *dialogue, creq, crit, rreq, rev = turns
    *earlier, prompt, response = dialogue
    if earlier:
        lines = [f"{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(earlier)]
        prompt = "\n\n".join([*lines, f"Human: {prompt}"])
    ex = {"prompt": prompt, "response": response, "critique": crit, "revision": rev}
    pid = by_text.get(creq.strip())
    ex.update({"principle": pid} if pid else {"critique_request": creq, "revision_request": rreq})
    return ex
