"""Every source the project cites can be followed inside the project.

(a) No file of the project points at notes that are not in the repository
(the design and reference notes the sources once pointed at).
(b) Every model parameter has a source, and every pointer of the form
``docs/<file>.md#<anchor>`` or ``README.md#<anchor>`` in the parameter sources,
the code, the configs, the tests, the benchmarks and the docs resolves: the file
exists and has that anchor, as a heading (GitHub's slug) or an explicit
``<a id="...">``. The older models' parameter table in docs/models.md matches
the ``cart`` model.
"""
import inspect
import re
from pathlib import Path

import pytest

from kernels.models import MODELS, get_model

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED_DIRS = ("kernels", "pipeline", "configs", "tests", "benchmarks", "docs")
SCANNED_FILES = ("README.md", "Makefile")
# built from pieces so that this file does not name them itself
FORBIDDEN = tuple(stem + "." + "md" for stem in ("DES" + "IGN", "REFER" + "ENCES"))
# a pointer from anywhere in the project: docs/<file>.md#<anchor>, README.md#<anchor>
POINTER = re.compile(r"(docs/[\w./-]+?\.md|README\.md)#([\w-]+)")
# a relative Markdown link inside docs/: [text](<file>.md#<anchor>), [text](#<anchor>)
DOC_LINK = re.compile(r"\]\(([\w./-]*?\.md)?#([\w-]+)\)")


def project_texts():
    """(path, text) of every text file the checks cover."""
    paths = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED_DIRS:
        paths += sorted(p for p in (ROOT / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        data = path.read_bytes()
        if b"\0" not in data:                 # skip binary files (plots)
            yield path, data.decode("utf-8", errors="replace")


def model_variants():
    """Every model ``cartcohort models`` lists: each factory's default, then one
    per boolean option switched on."""
    for name, factory in MODELS.items():
        yield name, {}
        for option, param in inspect.signature(factory).parameters.items():
            if isinstance(param.default, bool) and param.default is False:
                yield name, {option: True}


def slug(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation other
    than '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file: heading slugs (repeats numbered as GitHub
    does) and explicit ids."""
    found, seen, fenced = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def unresolved(target, anchor, cache):
    """None when ``target`` exists and has ``anchor``, else the reason."""
    if not target.is_file():
        return "no such file"
    if target not in cache:
        cache[target] = anchors(target)
    return None if anchor in cache[target] else "no such anchor"


def test_no_pointer_to_notes_outside_the_repository():
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path, text in project_texts()
            for number, line in enumerate(text.splitlines(), 1)
            if any(name in line for name in FORBIDDEN)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("name, options", list(model_variants()),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_parameter_has_a_source(name, options):
    model = get_model(name, **options)
    for p in model.parameters:
        assert p.source.strip(), (model.name, p.name)


def test_parameter_source_pointers_resolve():
    cache, bad = {}, []
    for name, options in model_variants():
        model = get_model(name, **options)
        for p in model.parameters:
            for file, anchor in POINTER.findall(p.source):
                why = unresolved(ROOT / file, anchor, cache)
                if why:
                    bad.append(f"{model.name}.{p.name}: {file}#{anchor} ({why})")
    assert not bad, "\n".join(bad)


def test_pointers_in_code_configs_and_docs_resolve():
    cache, bad, checked = {}, [], 0
    for path, text in project_texts():
        links = [(ROOT / file, f"{file}#{anchor}", anchor)
                 for file, anchor in POINTER.findall(text)]
        if path.suffix == ".md" and DOCS in path.parents:
            links += [((path.parent / file) if file else path, f"{file}#{anchor}", anchor)
                      for file, anchor in DOC_LINK.findall(text)]
        for target, shown, anchor in links:
            checked += 1
            why = unresolved(target.resolve(), anchor, cache)
            if why:
                bad.append(f"{path.relative_to(ROOT)}: {shown} ({why})")
    assert checked > 0
    assert not bad, "\n".join(bad)


def test_every_cited_work_has_one_entry():
    """docs/references.md gives each anchor once; the model sources point at
    entries that exist (checked above) and cite at least these works."""
    ids = re.findall(r"<a\s+id=\"([^\"]+)\"", (DOCS / "references.md").read_text("utf-8"))
    assert len(ids) == len(set(ids))
    assert {"stein-2019", "kimmel-2021", "barros-2021", "teachey-2016"} <= set(ids)


def test_cart_table_in_models_doc_matches_the_model():
    """docs/models.md's table of the cart model has its parameters in order,
    with the model's unit, typical value and spread."""
    text = (DOCS / "models.md").read_text(encoding="utf-8")
    section = text.split("## `cart`", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    model = get_model("cart")
    assert list(rows) == list(model.parameter_names)
    for p in model.parameters:
        unit, typical, sd, meaning = rows[p.name]
        assert unit == p.unit and meaning == p.description, p.name
        assert float(typical) == pytest.approx(p.typical) and float(sd) == p.sd_log, p.name
