"""The differential check against Cog 0.23's own server: which projects, which
requests, and how two answers are compared. The test (test_cog_differential.py)
only runs them and reports.

A case is a project (from Cog's integration suite or examples/models) and the
requests its script makes (`curl`, `cog predict -i/--json`, `cog train`), plus a
few probes every project gets (an undeclared field, explicit nulls, an SSE
request, a float input sent as an integer). Each comparison is one check."""
from __future__ import annotations

import base64
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests import cog_reference as ref
from tests.cog_suite.txtar import parse_archive, split_words

SUITE = Path("/work/shared/peer-suites/cog/tests")
REPO = ref.REPO
EXAMPLES = REPO / "examples" / "models"
PYTHON_HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
UNDECLARED = "cogkit_undeclared_probe"


def suite_dir() -> Path:
    """The suite sits beside the project's repository (shared/peer-suites/cog)."""
    for candidate in (REPO.parent / "shared" / "peer-suites" / "cog" / "tests", SUITE):
        if candidate.is_dir():
            return candidate
    return SUITE


def parse_txtar(text: str) -> tuple[str, dict[str, str]]:
    """(script, {file name: content}) of a txtar archive (the suite runner's parser)."""
    archive = parse_archive(text)
    return archive.script, archive.files


@dataclass
class Call:
    """One HTTP request to make against both servers."""
    label: str
    method: str
    path: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    name: str
    files: dict[str, str]
    calls: list[Call]
    predict: str | None
    train: str | None
    env: dict[str, str]
    concurrency: int
    skip: str | None = None  # why it cannot run here

    def write(self, root: Path) -> Path:
        project = root / self.name
        for name, text in self.files.items():
            path = project / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return project


NEEDS_PACKAGES = ("python_packages", "python_requirements", "system_packages", "run")


def _config(files: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        config = yaml.safe_load(files.get("cog.yaml", "")) or {}
    except yaml.YAMLError as e:
        return None, f"cog.yaml does not parse: {e}"
    if not isinstance(config, dict):
        return None, "cog.yaml is not a mapping"
    build = config.get("build") or {}
    needs = [key for key in NEEDS_PACKAGES if build.get(key)]
    if needs:
        return config, f"needs build.{needs[0]} (the reference venv holds only cog)"
    if build.get("gpu"):
        return config, "needs a GPU"
    if not (config.get("predict") or config.get("train")):
        return config, "no predict or train entry point"
    return config, None


def _rewrite_python(files: dict[str, str], config: dict[str, Any]) -> None:
    """Python versions are rewritten to the one here, as the suite runner does."""
    build = config.setdefault("build", {})
    build["python_version"] = PYTHON_HERE
    files["cog.yaml"] = yaml.safe_dump(config)


def _cli_value(value: str, files: dict[str, str]) -> Any:
    if value.startswith("@"):
        name = value[1:]
        data = files.get(name, "").encode()
        return "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    return value  # typed later against the schema (_type_cli_inputs)


def _script_calls(script: str, files: dict[str, str]) -> list[Call]:
    calls: list[Call] = []
    for number, raw in enumerate(script.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.lstrip("! ").strip()
        try:  # testscript's quoting; variables stay as "$NAME" (such calls are left out)
            words = split_words(line, lambda name: "$" + name)
        except ValueError:
            continue
        if not words:
            continue
        label = f"line {number}: {line[:80]}"
        if words[0] == "curl":
            call = _curl(words[1:], files, label)
            if call:
                calls.append(call)
        elif words[0] == "cog" and len(words) > 1 and words[1] in ("predict", "run", "train"):
            call = _cog_predict(words[1:], files, label)
            if call:
                calls.append(call)
    return calls


def _curl(words: list[str], files: dict[str, str], label: str) -> Call | None:
    headers: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        if words[i] == "-H" and i + 1 < len(words):
            name, _, value = words[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 2
        else:
            rest.append(words[i])
            i += 1
    if len(rest) < 2 or "$" in " ".join(rest) or headers.get("Prefer") == "respond-async":
        return None  # webhooks, upload servers, async: timing-dependent, compared by the suite itself
    method, path = rest[0].upper(), rest[1]
    if "/cancel" in path:
        return None
    body: Any = None
    if len(rest) > 2:
        text = files.get(rest[2][1:], "") if rest[2].startswith("@") else rest[2]
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            body = text
    return Call(label, method, path, body, headers)


def _cog_predict(words: list[str], files: dict[str, str], label: str) -> Call | None:
    surface = "/trainings" if words[0] == "train" else "/predictions"
    inputs: dict[str, Any] = {}
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("-i", "--input") and i + 1 < len(words):
            name, _, value = words[i + 1].partition("=")
            if name in inputs:  # repeated -i: a list input
                previous = inputs[name]
                inputs[name] = [*(previous if isinstance(previous, list) else [previous]), _cli_value(value, files)]
            else:
                inputs[name] = _cli_value(value, files)
            i += 2
        elif word == "--json" and i + 1 < len(words):
            text = words[i + 1]
            if text == "-" or text.startswith("@"):
                return None
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return None
            if isinstance(parsed, dict):
                inputs.update({k: v for k, v in parsed.items()})
            i += 2
        elif word in ("-o", "--output", "-e", "--env", "--upload-url", "-t", "--setup-timeout"):
            i += 2
        else:
            i += 1
    return Call(label, "POST", surface, {"input": inputs, "_cli": True})


def load_cases() -> list[Case]:
    cases = []
    suite = suite_dir()
    for path in sorted(suite.glob("*.txtar")):
        script, files = parse_txtar(path.read_text())
        cases.append(_case(path.stem, script, files))
    for project in sorted(p for p in EXAMPLES.iterdir() if (p / "cog.yaml").exists()):
        files = {str(f.relative_to(project)): f.read_text() for f in project.rglob("*")
                 if f.is_file() and "__pycache__" not in f.parts}
        cases.append(_case(f"example-{project.name}", "", files))
    return cases


def _case(name: str, script: str, files: dict[str, str]) -> Case:
    config, skip = _config(files)
    config = config or {}
    env = {}
    for item in config.get("environment") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    case = Case(name, files, _script_calls(script, files), config.get("predict"), config.get("train"), env,
                int((config.get("concurrency") or {}).get("max") or 1), skip)
    if skip is None:
        _rewrite_python(files, config)
    return case


# --- comparing ---------------------------------------------------------------

def normalize_output(value: Any) -> Any:
    """Files compare by content (data URIs differ in MIME guesses only); floats to 6 places."""
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        return {"file": base64.b64decode(value.split(";base64,", 1)[1]).hex()[:64]}
    if isinstance(value, float):  # kept apart from ints: 2 and 2.0 are different JSON answers
        return {"float": round(value, 6)}
    if isinstance(value, list):
        return [normalize_output(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize_output(v) for k, v in value.items()}
    return value


def error_locs(body: Any) -> Any:
    """Where a 422 says the problem is, as a sorted list of field paths."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return sorted({".".join(str(p) for p in d.get("loc", [])[-1:]) for d in detail if isinstance(d, dict)})
    return type(detail).__name__


@dataclass
class Answer:
    status_code: int
    body: Any
    events: list[str] | None = None


def send(client: httpx.Client, base: str, call: Call) -> Answer:
    body = call.body
    if isinstance(body, dict) and body.get("_cli"):
        body = {k: v for k, v in body.items() if k != "_cli"}
    kwargs: dict[str, Any] = {"headers": call.headers}
    if isinstance(body, (dict, list)):
        kwargs["json"] = body
    elif body is not None:
        kwargs["content"] = str(body)
        kwargs["headers"] = {"Content-Type": "application/json", **call.headers}
    if call.headers.get("Accept") == "text/event-stream":
        events: list[str] = []
        with client.stream(call.method, base + call.path, **kwargs) as response:
            for line in response.iter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
            return Answer(response.status_code, None, events)
    response = client.request(call.method, base + call.path, **kwargs)
    try:
        parsed = response.json()
    except json.JSONDecodeError:
        parsed = response.text
    return Answer(response.status_code, parsed)


def compare(label: str, cog: Answer, ours: Answer) -> list[tuple[str, Any, Any]]:
    """(check name, Cog's value, ours) for every aspect of one answer."""
    checks: list[tuple[str, Any, Any]] = [(f"{label} status code", cog.status_code, ours.status_code)]
    if cog.events is not None or ours.events is not None:
        checks.append((f"{label} SSE event names", _dedupe(cog.events), _dedupe(ours.events)))
        return checks
    if cog.status_code != ours.status_code:
        return checks
    if label.split(": ", 1)[-1].startswith(("curl GET /health-check", "GET /health-check")):
        checks.append((f"{label} health status", _field(cog.body, "status"), _field(ours.body, "status")))
    elif cog.status_code == 422:
        checks.append((f"{label} error fields", error_locs(cog.body), error_locs(ours.body)))
    elif cog.status_code in (200, 201) and isinstance(cog.body, dict) and isinstance(ours.body, dict) \
            and "status" in cog.body:
        checks.append((f"{label} prediction status", cog.body.get("status"), ours.body.get("status")))
        checks.append((f"{label} output", normalize_output(cog.body.get("output")),
                       normalize_output(ours.body.get("output"))))
        checks.append((f"{label} has error", cog.body.get("error") is not None, ours.body.get("error") is not None))
    return checks


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, dict) else None


def _dedupe(events: list[str] | None) -> list[str] | None:
    """Event kinds in order of first appearance (how many log chunks is not compared)."""
    if events is None:
        return None
    seen: list[str] = []
    for event in events:
        if event not in seen:
            seen.append(event)
    return seen


def compare_schemas(name: str, reference: dict[str, Any], ours: dict[str, Any], mode: str,
                    rejected: bool) -> list[tuple[str, Any, Any]]:
    """Input fields one by one, the required list, and the whole output schema; when
    Cog rejects the project, whether we reject it too (rejected: our build would)."""
    schemas = ours.get("components", {}).get("schemas", {})
    in_key, out_key = ("TrainingInput", "TrainingOutput") if mode == "train" else ("Input", "Output")
    if "error" in reference:
        return [(f"{name} {mode} schema builds", "error", "error" if rejected else "ok")]
    checks: list[tuple[str, Any, Any]] = []
    ref_in, our_in = reference["Input"], schemas.get(in_key, {})
    for field_name in sorted(set(ref_in.get("properties", {})) | set(our_in.get("properties", {}))):
        checks.append((f"{name} {in_key}.{field_name}", ref_in.get("properties", {}).get(field_name),
                       _resolve_enum(our_in.get("properties", {}).get(field_name), schemas)))
    checks.append((f"{name} {in_key} required", sorted(ref_in.get("required", [])), sorted(our_in.get("required", []))))
    checks.append((f"{name} {out_key}", _numbers(reference["Output"]), _numbers(schemas.get(out_key))))
    return checks


def _resolve_enum(prop: dict[str, Any] | None, schemas: dict[str, Any]) -> Any:
    if not prop or "allOf" not in prop:
        return _numbers(prop)
    target = prop["allOf"][0].get("$ref", "").rsplit("/", 1)[-1]
    resolved = {k: v for k, v in prop.items() if k not in ("allOf", "title")}
    resolved["enum"] = schemas.get(target, {}).get("enum")
    return _numbers(resolved)


def _numbers(value: Any) -> Any:
    """1 and 1.0 are the same bound (Cog's SDK writes floats)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def probes(case: Case, reference: dict[str, Any]) -> list[Call]:
    """Requests every project gets, built from its schema and first valid input."""
    if "Input" not in reference or not case.predict:
        return []
    props = reference["Input"].get("properties", {})
    base = next((c.body["input"] for c in case.calls if c.path == "/predictions" and c.method == "POST"
                 and isinstance(c.body, dict) and isinstance(c.body.get("input"), dict)
                 and set(c.body["input"]) <= set(props)), None)
    if base is None:
        base = {name: _sample(props[name]) for name in reference["Input"].get("required", []) if name in props}
        if any(v is None for v in base.values()):
            return []
    base = _short_waits(type_inputs(base, props), props)
    calls = [Call("probe: the script's input", "POST", "/predictions", {"input": base}),
             Call("probe: an undeclared input field", "POST", "/predictions", {"input": {**base, UNDECLARED: 1}}),
             Call("probe: SSE", "POST", "/predictions", {"input": base}, {"Accept": "text/event-stream"}),
             Call("probe: /openapi.json status", "GET", "/openapi.json")]
    for name, prop in props.items():
        if prop.get("nullable") and name not in base:
            calls.append(Call(f"probe: explicit null for {name}", "POST", "/predictions", {"input": {**base, name: None}}))
        if prop.get("type") == "number" and name not in base:
            calls.append(Call(f"probe: integer for number {name}", "POST", "/predictions", {"input": {**base, name: 2}}))
    return calls


WAITS = ("sleep", "duration", "seconds", "delay", "wait")


def _short_waits(base: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    """Probes don't sit out a model's long default sleep (`duration: float = 60`): such
    inputs get their smallest allowed value, the same for both servers."""
    out = dict(base)
    for name, prop in props.items():
        if name not in out and any(w in name for w in WAITS) and prop.get("type") in ("number", "integer") \
                and isinstance(prop.get("default"), (int, float)) and prop["default"] > 1:
            out[name] = max(prop.get("minimum", 0), 0)
    return out


def _sample(prop: dict[str, Any]) -> Any:
    """A value a required input accepts, when the script gives none."""
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type")
    low = prop.get("minimum", 1)
    samples = {"string": "a" * int(prop.get("minLength", 1)), "integer": int(low), "number": float(low),
               "boolean": True}
    if kind == "array":
        item = _sample(prop.get("items") or {})
        return None if item is None else [item]
    if prop.get("format") == "uri":
        return "data:text/plain;base64,aGVsbG8="
    return samples.get(kind or "")


def type_inputs(values: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    """`-i name=value` strings typed as Cog's CLI types them, by the schema."""
    typed = {}
    for name, value in values.items():
        prop = props.get(name, {})
        kind = prop.get("type") or (prop.get("items") or {}).get("type")
        typed[name] = [_typed(v, kind) for v in value] if isinstance(value, list) else _typed(value, kind)
    return typed


def _typed(value: Any, kind: str | None) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "array" and value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
