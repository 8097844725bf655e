"""The layout holds: one home per concern, checked by reading the code (see docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Our Django apps (a folder with an apps.py) and the project package they stand on.
APPS = tuple(sorted(path.parent.name for path in ROOT.glob("*/apps.py")))
APP_PACKAGES = ("project", *APPS)
SDP_PACKAGE = ROOT / "tickets" / "sdp"


def _app_modules() -> list[Path]:
    return sorted(
        path for package in APP_PACKAGES for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts
    )


def _constructs(tree: ast.AST, name: str) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called == name:
                lines.append(node.lineno)
    return lines


def test_only_the_sdp_package_constructs_the_sdp_client():
    """Every SDP client comes from the one factory, which renews SDP Cloud (Zoho) tokens."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _app_modules()
        if SDP_PACKAGE not in path.parents
        for line in _constructs(ast.parse(path.read_text()), "ServiceDeskClient")
    ]
    assert not offenders, f"construct the SDP client with tickets.sdp.auth.servicedesk_client(), not at {offenders}"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("get_model", "import_module"):
            found.append((node.lineno, ast.unparse(node)))  # an import by name is still an import
    return found


def test_project_imports_no_app_except_in_urls():
    """`project/` is the base the apps stand on; only urls.py wires the apps in."""
    assert {"tickets", "enhancements"} <= set(APPS)
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for path in sorted((ROOT / "project").rglob("*.py"))
        if path.name != "urls.py"
        for line, module in _imported_modules(ast.parse(path.read_text()))
        if module.split(".")[0] in APPS or "get_model" in module or "import_module" in module
    ]
    assert not offenders, offenders


# Each part may import only the parts listed after it (docs/architecture.md).
LAYERS = ("enhancements", "clusters", "tickets", "project")


def test_imports_go_one_way():
    """Imports go one way: enhancements -> clusters -> tickets -> project."""
    offenders = []
    for path in _app_modules():
        part = path.parts[len(ROOT.parts)]
        if part not in LAYERS or part == "project":
            continue
        above = set(LAYERS[: LAYERS.index(part)])
        offenders += [
            f"{path.relative_to(ROOT)}:{line} {module}"
            for line, module in _imported_modules(ast.parse(path.read_text()))
            if module.split(".")[0] in above
        ]
    assert not offenders, offenders


MAX_MODULE_LINES = 400
# Modules over the limit while their owners split them. Remove an entry as soon as its file is back under
# the limit: the test fails for an entry that is no longer needed, so the list only shrinks.
OVER_THE_LIMIT: set[str] = set()


def test_app_modules_stay_under_400_lines():
    """A module over 400 lines holds more than one concern: split it (CONVENTIONS.md, "small modules")."""
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in _app_modules()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES and name not in OVER_THE_LIMIT}
    assert not too_long, (
        f"split these modules to at most {MAX_MODULE_LINES} lines (docs/architecture.md says where things go): "
        f"{too_long}"
    )
    stale = sorted(name for name in OVER_THE_LIMIT if lengths.get(name, 0) <= MAX_MODULE_LINES)
    assert not stale, (
        f"{stale} no longer exceed {MAX_MODULE_LINES} lines (or are gone): remove them from OVER_THE_LIMIT "
        "in tests/test_layout.py"
    )


# Modules of public services: each public module-level function is a service (CONVENTIONS.md, "Where things
# live"). tickets/search/ exports three services (checked below); its other modules are scoring helpers.
SERVICE_MODULES = sorted(
    {
        ROOT / "tickets" / "services.py",
        ROOT / "tickets" / "history.py",
        ROOT / "tickets" / "ai_budget.py",
        ROOT / "tickets" / "evaluation.py",
        ROOT / "tickets" / "indexing.py",
        ROOT / "clusters" / "services.py",
        ROOT / "enhancements" / "updates.py",
        *(ROOT / "tickets" / "imports").glob("*.py"),
        *(ROOT / "enhancements" / "services").glob("*.py"),
        *(ROOT / "enhancements" / "triage" / name for name in ("decide.py", "writes.py", "acceptance.py")),
    }
)
# The things services act on: a service's name starts with one.
ENTITIES = (
    "tenant", "webhook_secret", "webhook", "ticket", "asset", "article", "enhancement", "feedback", "api_token",
    "cluster", "followup", "triage", "llm", "retrieval",
)  # fmt: skip
ACTIONS = {
    "generate", "decode", "build", "create", "update", "upsert", "refresh", "merge", "store", "enqueue", "fetch",
    "sweep", "import", "approve", "reject", "rerun", "repost", "post", "fail", "retry", "claim", "process",
    "receive", "authenticate", "revoke", "check", "dismiss", "split", "link", "count", "render", "defer",
    "suggest", "decide", "apply", "undo", "release", "record", "list", "run", "find", "search", "lift", "estimate",
    "load", "evaluate", "calibrate", "embed", "enrich", "index",
}  # fmt: skip
# Public functions of those modules that are not services, and why (the rules do not apply to them).
NOT_SERVICES = {
    "tickets/imports/report.py:open_csv": "the CSV reader the import services share",
    "enhancements/services/pipeline.py:webhook_fast_path_available": "a question about the database connection",
    "enhancements/triage/decide.py:urgency_votes": "turns the LLM output's urgency cues into priority votes",
    "tickets/ai_budget.py:llm_budget_day": "the calendar day a budget counts in (LLM_BUDGET_TIMEZONE), a clock",
}


def _public_functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [
        node
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_")
    ]


def service_problems(paths: list[Path]) -> list[str]:
    """Return every public service that takes a positional argument or is not named <entity>_<action>."""
    problems = []
    for path in paths:
        for node in _public_functions(path):
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.name}"
            positional = [a.arg for a in node.args.posonlyargs + node.args.args]
            if positional or node.args.vararg:
                problems.append(f"{where} takes {positional or '*args'} positionally: put `*,` before them")
            if where in NOT_SERVICES:
                continue
            entity = next((e for e in ENTITIES if node.name.startswith(e + "_")), None)
            if entity is None or not ACTIONS & set(node.name[len(entity) + 1 :].split("_")):
                problems.append(
                    f"{where} is not named <entity>_<action> (entities {ENTITIES}, actions in ACTIONS): rename it, "
                    "or extend ENTITIES / ACTIONS in tests/test_layout.py"
                )
    return problems


def test_public_services_take_keyword_arguments_and_are_named_entity_action():
    """`enhancement_approve(enhancement_id=..., user=...)`: a call says what each value is."""
    assert len(SERVICE_MODULES) >= 10 and all(path.is_file() for path in SERVICE_MODULES)
    stale = [
        name
        for name in NOT_SERVICES
        if name.split(":")[1] not in {f.name for f in _public_functions(ROOT / name.split(":")[0])}
    ]
    assert not stale, f"remove {stale} from NOT_SERVICES: they are gone"
    assert service_problems(SERVICE_MODULES) == []


def test_the_search_services_take_keyword_arguments():
    """tickets.search's other public names are scoring and text helpers; its three services follow the rules."""
    import inspect

    import tickets.search

    for name in ("ticket_search_similar", "article_find_relevant", "asset_find_mentioned"):
        parameters = inspect.signature(getattr(tickets.search, name)).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters), name


def test_the_service_check_catches_a_positional_argument_and_a_bad_name(tmp_path):
    module = tmp_path / "services.py"
    module.write_text(
        "def ticket_upsert(ticket, *, reason): ...\n"
        "def close_ticket(*, ticket): ...\n"
        "def ticket_summary(*, ticket): ...\n"
        "def enhancement_approve(*, enhancement_id): ...\n"
        "def _helper(x): ...\n"
    )
    problems = service_problems([module])
    assert len(problems) == 3, problems
    assert "ticket_upsert takes ['ticket'] positionally" in problems[0]
    assert "close_ticket is not named" in problems[1] and "ticket_summary is not named" in problems[2]
