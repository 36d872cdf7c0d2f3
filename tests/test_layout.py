"""The package's layering (docs/architecture.md) and the stage registry's refusals. The import rules
are read from the source (every import, top-level or inside a function), so a new module cannot break
them unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from factory.config import load_config
from factory.engine.pipeline import Overrides, Pipeline
from factory.errors import FactoryError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "factory"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the package and the factory modules it imports (not under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, tree = module_name(path), ast.parse(path.read_text())
        found: set[str] = set()
        checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                    and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in checking:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("factory")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("factory"):
                for a in node.names:  # `from factory.stages import judge` imports a module
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                              or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else node.module)
        graph[name] = found - {name}
    return graph


GRAPH = imports()


def importers(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_import_graph_is_read() -> None:
    assert "factory.engine.runner" in GRAPH and "factory.engine.caller" in GRAPH["factory.engine.runner"]
    assert "factory.stages.judge" in GRAPH["factory.stages.registry"]


def test_the_engine_never_imports_what_sits_above_it() -> None:
    above = ("factory.export", "factory.report", "factory.review", "factory.commands", "factory.executors",
             "factory.cli", "factory.train")
    bad = {m: sorted(d for d in deps if under(d, *above)) for m, deps in importers("factory.engine").items()}
    assert not {m: d for m, d in bad.items() if d}


def test_stages_import_only_the_layers_below_them() -> None:
    allowed = ("factory.stages", "factory.engine.caller", "factory.engine.stats", "factory.records",
               "factory.judging", "factory.search", "factory.hygiene", "factory.config", "factory.constitution",
               "factory.prompts", "factory.models", "factory.errors", "factory.yamlfile", "factory.inputs")
    bad = {m: sorted(d for d in deps if not under(d, *allowed)) for m, deps in importers("factory.stages").items()}
    assert not {m: d for m, d in bad.items() if d}


def test_lower_layers_stay_below() -> None:
    """models, judging, search and hygiene never import the engine's assembly, stages, export or commands;
    export never imports executors, commands or the review app's server."""
    assembly = ("factory.engine.pipeline", "factory.engine.runner", "factory.engine.estimate", "factory.stages",
                "factory.export", "factory.executors", "factory.commands", "factory.report", "factory.review",
                "factory.cli")
    for layer in ("factory.models", "factory.judging", "factory.search", "factory.hygiene", "factory.records",
                  "factory.config", "factory.constitution", "factory.prompts", "factory.errors"):
        bad = {m: sorted(d for d in deps if under(d, *assembly)) for m, deps in importers(layer).items()}
        assert not {m: d for m, d in bad.items() if d}, layer
    bad = {m: sorted(d for d in deps if under(d, "factory.executors", "factory.commands", "factory.cli",
                                                 "factory.review.server", "factory.review.runview"))
           for m, deps in importers("factory.export").items()}
    assert not {m: d for m, d in bad.items() if d}


def test_no_import_cycle() -> None:
    """Between modules, counting imports inside functions too (a package's __init__ counts as a module)."""
    seen: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(GRAPH.get(m, ())):
            if d not in GRAPH:
                continue
            if seen.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in seen:
                visit(d, path + [d])
        seen[m] = 2

    for m in sorted(GRAPH):
        if m not in seen:
            visit(m, [m])
    # a package that re-exports its submodules, imported back by one of them, is not a cycle that matters
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, real


def test_no_module_over_400_lines() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def write(tmp_path: Path, base: str, **stages) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "pipelines" / base).read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"] |= stages
    (path := tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("base, stages, wasted", [
    ("idk.yaml", {"judge": {}}, "stages.judge"),
    ("idk.yaml", {"critique_revise": {}}, "stages.critique_revise"),
    ("idk.yaml", {"factcheck": {}}, "stages.factcheck"),
    ("factcheck.yaml", {"judge": {}}, "stages.judge"),
])
def test_stages_whose_rows_export_would_discard_are_refused(tmp_path: Path, base: str, stages: dict,
                                                             wasted: str) -> None:
    with pytest.raises(FactoryError, match=f"discard the work of {wasted}"):
        Pipeline.prepare(load_config(write(tmp_path, base, **stages)), Overrides())


def test_combinations_whose_rows_merge_are_accepted(tmp_path: Path) -> None:
    """A judge beside fact checks without `prefer`: judged pairs carry fact scores. `prefer` beside
    critique and revision: it ranks the revisions it checked."""
    import yaml

    cfg = yaml.safe_load(write(tmp_path, "factcheck.yaml", judge={}).read_text())
    cfg["stages"]["factcheck"]["prefer"] = False
    (path := tmp_path / "merged.yaml").write_text(yaml.safe_dump(cfg))
    pipe = Pipeline.prepare(load_config(path), Overrides(), needs_seeds=False)
    assert pipe.record_stages == ["answer", "critique_revise", "factcheck", "judge"]
    assert Pipeline.prepare(load_config(ROOT / "pipelines" / "factcheck.yaml"), Overrides()).record_stages == [
        "answer", "critique_revise", "factcheck"]


def test_the_cli_refuses_a_wasteful_pipeline_before_any_run_directory(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from factory.cli import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", str(write(tmp_path, "idk.yaml", judge={})), "--out", str(out)],
                           standalone_mode=False)
    assert isinstance(r.exception, FactoryError) and r.exception.exit_code == 2 and not out.exists()


def test_a_model_spec_is_parsed_once_into_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.models import ModelSpec

    spec = ModelSpec.parse("openai:gpt-4o-mini")
    assert (spec.provider, spec.name, str(spec), spec.local) == ("openai", "gpt-4o-mini", "openai:gpt-4o-mini", False)
    assert ModelSpec.parse("local:/models/a:b").name == "/models/a:b" and ModelSpec.parse("local:smollm2").local
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert spec.base_url == "http://127.0.0.1:9/v1" and ModelSpec.parse("local:smollm2").base_url is None
    for bad in ("gpt-4o", "local:", "mistral:large"):
        with pytest.raises(FactoryError, match="valid model specs"):
            ModelSpec.parse(bad)
    assert ModelSpec.parse("fake:scripted", known=False).name == "scripted"


def test_a_records_constitution_is_a_name_and_a_digest() -> None:
    """Typed fields; a record from an older run, which packed both into "name@version:sha256", reads the same."""
    from factory.records import ConstitutionRef, Record

    rec = Record.new("Hello?", "file")
    rec.constitution = ConstitutionRef(name="harmless@1.0.0", digest="ab" * 32)
    old = Record.model_validate(rec.model_dump() | {"constitution": "harmless@1.0.0:" + "ab" * 32})
    assert old.constitution == rec.constitution and Record.model_validate_json(rec.model_dump_json()) == rec
