"""What an adopter of the course relies on: licences, citation, changelog, GitHub workflows,
pre-commit hooks, the grading container, templates and the credits page.

The workflows cannot run here; these tests check that they call exactly the README's commands
(read from its "Two commands" block) and restore the data mirror the way tools/env.sh expects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from dlbook.data.download import ChecksumError
from dlbook.data.registry import REGISTRY, DataFile

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def project_field(name: str) -> str:
    """A string field of pyproject.toml's [project] table (no tomllib: Python 3.10 is supported)."""
    table = re.search(r"^\[project\]$(.*?)(?=^\[)", read("pyproject.toml"), re.M | re.S)
    assert table, "pyproject.toml has no [project] table"
    value = re.search(rf'^{name} = "([^"]*)"$', table.group(1), re.M)
    assert value, f"pyproject.toml's [project] has no {name}"
    return value.group(1)


def readme_commands() -> list[str]:
    """The commands of the README's fenced block under '## Two commands', comments dropped."""
    text = read("README.md")
    section = re.search(r"^## Two commands.*?$(.*?)^## ", text, re.M | re.S)
    assert section, "README.md has no '## Two commands' section"
    block = re.search(r"^```(?:bash|sh)?\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "the README's 'Two commands' section has no fenced code block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def workflow(name: str) -> dict:
    path = WORKFLOWS / name
    assert path.is_file(), f"missing workflow .github/workflows/{name}"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and "jobs" in data, f"{name} is not a workflow"
    return data


def triggers(wf: dict) -> dict:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as the boolean True
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def steps(wf: dict) -> list[dict]:
    return [step for job in wf["jobs"].values() for step in job.get("steps", [])]


def run_lines(wf: dict) -> list[str]:
    return [line.strip() for step in steps(wf) if "run" in step for line in step["run"].splitlines()]


def uses(wf: dict, action: str) -> list[dict]:
    return [s for s in steps(wf) if s.get("uses", "").split("@")[0] == action]


def config_repository_url() -> str | None:
    config = yaml.safe_load(read("book/_config.yml"))
    return (config.get("repository") or {}).get("url")


def changelog_releases() -> list[tuple[str, str]]:
    """(version, date) of each released entry, newest first ('## [0.1.0] - 2026-12-06')."""
    return re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\] - (\d{4}-\d{2}-\d{2})\s*$", read("CHANGELOG.md"), re.M)


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in read("requirements.txt").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


# --- licences ----------------------------------------------------------------------------------


def test_license_is_mit_and_names_the_holder():
    text = read("LICENSE")
    assert text.splitlines()[0].strip() == "MIT License"
    assert re.search(r"^Copyright \(c\) 2026 The Deep Learning, Derived and Measured authors$", text, re.M)
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    assert project_field("license") == "MIT", "pyproject.toml and LICENSE must agree"


def test_content_licence_names_cc_by_sa_its_parts_and_the_datasets():
    text = read("LICENSE-CONTENT.md")
    assert "Creative Commons Attribution-ShareAlike 4.0 International" in text
    assert "https://creativecommons.org/licenses/by-sa/4.0/" in text
    for part in ("book/", "chapters/", "solutions/", "labs/", "dlbook/", "tools/", "tests/", "benchmarks/"):
        assert f"`{part}`" in text, f"LICENSE-CONTENT.md does not say which licence covers {part}"
    for licence in {_licence_name(entry) for entry in REGISTRY.values()}:
        assert licence in text, f"LICENSE-CONTENT.md does not list the dataset licence {licence!r}"


def _licence_name(entry: DataFile) -> str:
    """The licence itself, without the attribution or citation the registry adds after it."""
    return re.split(r"[(;]", entry.license)[0].strip()


# --- citation and changelog ----------------------------------------------------------------------


def test_citation_parses_and_agrees_with_pyproject_and_changelog():
    cff = yaml.safe_load(read("CITATION.cff"))
    for key in ("cff-version", "message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff lacks the required {key!r}"
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "Deep Learning, Derived and Measured"
    assert cff["type"] == "software" and cff["license"] == "MIT"
    version = project_field("version")
    releases = changelog_releases()
    assert releases, "CHANGELOG.md has no '## [x.y.z] - YYYY-MM-DD' entry"
    top_version, top_date = releases[0]
    assert str(cff["version"]) == version == top_version, (
        f"versions disagree: CITATION.cff {cff['version']}, pyproject.toml {version}, CHANGELOG.md {top_version}")
    assert str(cff["date-released"]) == top_date, "CITATION.cff's date-released is not the release's date"


def test_citation_repository_is_the_books_configured_url():
    cff = yaml.safe_load(read("CITATION.cff"))
    url = config_repository_url()
    if url:
        assert cff.get("repository-code") == url, "repository-code must be book/_config.yml's repository url"
    else:
        assert "repository-code" not in cff, "no repository url is configured, so none may be cited"


def test_every_github_url_in_the_adoption_files_is_the_configured_repository():
    url = config_repository_url()
    files = ["CITATION.cff", "LICENSE-CONTENT.md", "CHANGELOG.md", ".github/ISSUE_TEMPLATE/config.yml", "pyproject.toml",
             ".github/pull_request_template.md", "Dockerfile", ".devcontainer/devcontainer.json"]
    for rel in files:
        for found in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", read(rel)):
            assert url and found == url.rstrip("/"), f"{rel} names {found}, the book's config {url}"


def test_changelog_keeps_a_changelog_format():
    text = read("CHANGELOG.md")
    assert text.startswith("# Changelog") and "keepachangelog.com" in text
    headings = re.findall(r"^## (.+)$", text, re.M)
    released = [h for h in headings if h != "[Unreleased]"]
    assert released and all(re.fullmatch(r"\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", h) for h in released), headings
    dates = [date for _, date in changelog_releases()]
    assert dates == sorted(dates, reverse=True), "releases must be listed newest first"
    first = text.split(f"## {released[0]}", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", first, re.M)


# --- workflows ---------------------------------------------------------------------------------


def test_readme_has_the_two_commands():
    commands = readme_commands()
    assert len(commands) == 2 and any("test" in c for c in commands) and any("build" in c for c in commands), commands


def test_test_workflow_runs_the_readmes_test_command_on_push_and_pull_request():
    wf = workflow("test.yml")
    assert {"push", "pull_request"} <= set(triggers(wf))
    (test_command,) = [c for c in readme_commands() if "test" in c]
    assert test_command in run_lines(wf), f"no run step of test.yml is exactly `{test_command}`"
    assert all(line == test_command for line in run_lines(wf) if "tools/test" in line)
    job = next(iter(wf["jobs"].values()))
    assert "ubuntu" in job["runs-on"]
    assert "3.11" in str(job.get("container", "")) + str(uses(wf, "actions/setup-python")), "Python 3.11"
    installs = [line for line in run_lines(wf) if "apt-get install" in line]
    assert installs and all({"chromium", "chromium-driver"} <= set(line.split()) for line in installs)


@pytest.mark.parametrize("name", ["test.yml", "pages.yml"])
def test_workflow_restores_the_data_mirror_or_downloads_it(name):
    wf = workflow(name)
    (cache,) = uses(wf, "actions/cache")
    assert cache["with"]["path"] == "../shared/data", "tools/env.sh points DLBOOK_DATA_MIRROR at ../shared/data"
    # the cached mirror is renewed when any registered file or checksum changes
    assert "hashFiles('dlbook/data/registry.py', 'dlbook/data/fsdd_sha256.txt')" in cache["with"]["key"]
    fetch = [s for s in steps(wf) if "tools/fetch_mirror.py" in s.get("run", "")]
    assert len(fetch) == 1, f"{name}: one step fills the mirror with tools/fetch_mirror.py"
    assert fetch[0].get("if") == f"steps.{cache['id']}.outputs.cache-hit != 'true'", "download only on a miss"
    assert "tools/fetch_mirror.py ../shared/data" in fetch[0]["run"]
    order = steps(wf)
    consumer = next(s for s in order if any(c in s.get("run", "") for c in readme_commands()))
    assert order.index(cache) < order.index(fetch[0]) < order.index(consumer)


def test_pages_workflow_builds_with_the_readmes_command_and_deploys():
    wf = workflow("pages.yml")
    (build_command,) = [c for c in readme_commands() if "build" in c]
    assert build_command in run_lines(wf), f"no run step of pages.yml is exactly `{build_command}`"
    assert wf["permissions"].get("pages") == "write" and wf["permissions"].get("id-token") == "write"
    (upload,) = uses(wf, "actions/upload-pages-artifact")
    assert upload["with"]["path"] == "_build/html"
    assert uses(wf, "actions/deploy-pages"), "pages.yml must deploy with actions/deploy-pages"


def test_pages_workflow_publishes_the_pdf_built_by_the_readmes_command():
    """The README's PDF command, writing into the folder the site is uploaded from."""
    readme = read("README.md")
    assert "`bash tools/build-pdf`" in readme and (ROOT / "tools" / "build-pdf").is_file()
    assert "bash tools/build-pdf --out _build/html/dlbook.pdf" in run_lines(workflow("pages.yml"))


def test_pages_workflow_publishes_release_tags_that_name_the_version():
    wf = workflow("pages.yml")
    assert triggers(wf)["push"] == {"tags": ["v*"]}, "the site is published from release tags only"
    assert "python3 tools/project.py --check-tag \"$GITHUB_REF_NAME\"" in run_lines(wf)


def _project():
    sys.path.insert(0, str(ROOT / "tools"))
    import project

    return project


def test_release_links_come_from_the_config_and_the_version():
    project = _project()
    version = tomllib.loads(read("pyproject.toml"))["project"]["version"]
    assert project.release_tag() == f"v{version}" and (version, ) == changelog_releases()[0][:1]
    assert project.install_spec() == f"dlbook @ git+{config_repository_url()}@v{version}"
    assert project.colab_url("labs/cnn/cnn-lab.ipynb") == (
        "https://colab.research.google.com/github/" + config_repository_url().removeprefix("https://github.com/")
        + f"/blob/v{version}/labs/cnn/cnn-lab.ipynb")
    cell = _colab_cell_source()
    assert f'"{project.install_spec()}"' in cell, "the lessons' Colab cell must install this release"


def test_check_tag_accepts_only_this_versions_tag():
    script = str(ROOT / "tools" / "project.py")
    project = _project()
    ok = subprocess.run([sys.executable, script, "--check-tag", project.release_tag()], capture_output=True, text=True)
    wrong = subprocess.run([sys.executable, script, "--check-tag", "v0.0.0-wrong"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert wrong.returncode == 1 and "not this version's release tag" in wrong.stderr


def _colab_cell_source() -> str:
    sys.path.insert(0, str(ROOT / "tools"))
    import colab_cell

    return colab_cell.SOURCE


# --- pre-commit --------------------------------------------------------------------------------


def test_pre_commit_hooks_pin_requirements_versions_and_check_what_the_tests_check():
    config = yaml.safe_load(read(".pre-commit-config.yaml"))
    pins = requirement_pins()
    hooks = {hook["id"]: (repo, hook) for repo in config["repos"] for hook in repo["hooks"]}
    expected = {"nbstripout": "nbstripout", "ruff-check": "ruff", "nbqa-ruff": "nbqa"}
    for hook_id, package in expected.items():
        assert hook_id in hooks, f".pre-commit-config.yaml has no {hook_id} hook"
        repo, _ = hooks[hook_id]
        assert str(repo["rev"]).removeprefix("v") == pins[package], (
            f"{hook_id} rev {repo['rev']} != requirements.txt's {package}=={pins[package]}")
    _, nbqa_ruff = hooks["nbqa-ruff"]
    assert f"ruff=={pins['ruff']}" in nbqa_ruff.get("additional_dependencies", [])
    # tests/test_lint.py: `ruff check dlbook tests nbgrader_config.py`, `nbqa ruff chapters solutions`
    ruff_files = re.compile(hooks["ruff-check"][1]["files"])
    for path, checked in [("dlbook/train.py", True), ("tests/test_x.py", True), ("nbgrader_config.py", True),
                          ("labs/ann/x.py", False)]:
        assert bool(ruff_files.search(path)) is checked, path
    nb_files = re.compile(nbqa_ruff["files"])
    for path, checked in [("chapters/ann/x.ipynb", True), ("solutions/ann/x.ipynb", True), ("labs/ann/x.ipynb", False)]:
        assert bool(nb_files.search(path)) is checked, path
    for hook_id in ("ruff-check", "nbqa-ruff"):
        assert "--fix" not in hooks[hook_id][1].get("args", []), "the tests check, they do not fix"


# --- the mirror fetcher -----------------------------------------------------------------------


def fetch_mirror():
    spec = importlib.util.spec_from_file_location("fetch_mirror", ROOT / "tools" / "fetch_mirror.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(tmp_path: Path, payload: bytes, registered: bytes, key: str = "demo/file.bin") -> DataFile:
    """A registry entry whose URL is a local file (``file://``) holding ``payload``; the registry
    expects the sha256 of ``registered``."""
    source = tmp_path / "upstream" / key
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    return DataFile(key, source.as_uri(), hashlib.sha256(registered).hexdigest(), "test", "a test file")


def test_fetch_downloads_into_the_mirror_layout_and_verifies(tmp_path):
    entry = _entry(tmp_path, b"the real bytes", registered=b"the real bytes")
    path = fetch_mirror().fetch_into(entry, tmp_path / "mirror")
    assert path == tmp_path / "mirror" / "demo" / "file.bin" and path.read_bytes() == b"the real bytes"


def test_fetch_with_a_wrong_checksum_raises_and_leaves_nothing(tmp_path):
    entry = _entry(tmp_path, b"tampered bytes", registered=b"the real bytes")
    with pytest.raises(ChecksumError, match="demo/file.bin"):
        fetch_mirror().fetch_into(entry, tmp_path / "mirror")
    assert not [p for p in (tmp_path / "mirror").rglob("*") if p.is_file()], "a bad download was left behind"


def test_fetch_rejects_wrong_bytes_from_the_download(tmp_path, monkeypatch):
    module = fetch_mirror()

    def wrong_bytes(url, target, timeout):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not the registered file")

    monkeypatch.setattr(module, "_download", wrong_bytes)
    key = "mnist/t10k-labels-idx1-ubyte.gz"
    with pytest.raises(ChecksumError):
        module.fetch_into(REGISTRY[key], tmp_path)
    assert not (tmp_path / key).exists()


def test_fetch_keeps_a_good_copy_and_replaces_a_bad_one(tmp_path, monkeypatch):
    module = fetch_mirror()
    entry = _entry(tmp_path, b"the real bytes", registered=b"the real bytes")
    kept = tmp_path / "mirror" / entry.key
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"the real bytes")

    def no_network(url, target, timeout):
        raise AssertionError("a verified copy must not be downloaded again")

    monkeypatch.setattr(module, "_download", no_network)
    assert module.fetch_into(entry, tmp_path / "mirror") == kept
    monkeypatch.undo()
    kept.write_bytes(b"corrupt")
    assert module.fetch_into(entry, tmp_path / "mirror").read_bytes() == b"the real bytes"


def test_main_reports_wrong_checksums_and_skips_what_cannot_be_downloaded(tmp_path, monkeypatch, capsys):
    module = fetch_mirror()
    good = _entry(tmp_path, b"good", registered=b"good", key="demo/good.bin")
    bad = _entry(tmp_path, b"tampered", registered=b"expected", key="demo/bad.bin")
    gone = DataFile("demo/gone.bin", (tmp_path / "nowhere.bin").as_uri(), "0" * 64, "test", "a missing file")
    for entry in (good, bad, gone):
        monkeypatch.setitem(REGISTRY, entry.key, entry)
    mirror = tmp_path / "mirror"
    assert module.main([str(mirror), "--only", good.key, gone.key]) == 0
    assert "cannot be downloaded" in capsys.readouterr().err and (mirror / good.key).is_file()
    assert module.main([str(mirror), "--only", good.key, gone.key, "--strict"]) == 1
    assert module.main([str(mirror), "--only", good.key, bad.key]) == 1
    assert not (mirror / bad.key).exists()
    assert module.main([str(mirror), "--only", bad.key, "--skip", bad.key]) == 0
    with pytest.raises(SystemExit, match="no dataset file"):
        module.main([str(mirror), "--skip", "demo/unknown.bin"])


# --- container, templates, credits, README ----------------------------------------------------


def test_dockerfile_and_devcontainer():
    text = read("Dockerfile")
    assert re.search(r"^FROM python:3\.11-slim-bookworm\b", text, re.M)
    install = " ".join(re.findall(r"apt-get install[^\n&]*", text))
    assert {"git", "chromium", "chromium-driver"} <= set(install.split())
    for copied in ("requirements.lock", "pyproject.toml", "dlbook/"):
        assert re.search(rf"^COPY .*{re.escape(copied)}", text, re.M), f"the image must copy {copied}"
    assert "pip install -r requirements.lock" in text
    assert re.search(r"^USER grader$", text, re.M) and re.search(r"^WORKDIR /course$", text, re.M)
    assert "untrusted" in text, "say why the container exists"
    devcontainer = json.loads(read(".devcontainer/devcontainer.json"))
    assert devcontainer["build"]["dockerfile"] == "../Dockerfile" and devcontainer["build"]["context"] == ".."
    assert devcontainer.get("remoteUser") == "grader"


@pytest.mark.parametrize("name", ["bug.yml", "lesson.yml"])
def test_issue_forms_ask_for_lesson_profile_device_and_torch(name):
    form = yaml.safe_load(read(f".github/ISSUE_TEMPLATE/{name}"))
    assert form["name"] and form["description"]
    fields = {item["id"]: item for item in form["body"] if "id" in item}
    for field in ("lesson", "profile", "device", "torch", "what-happened"):
        assert field in fields, f"{name} does not ask for {field}"
    assert {"quick", "full"} <= set(fields["profile"]["attributes"]["options"])
    config = yaml.safe_load(read(".github/ISSUE_TEMPLATE/config.yml"))
    assert isinstance(config.get("blank_issues_enabled"), bool)


def test_pull_request_template_asks_for_the_run_and_the_checklist():
    text = read(".github/pull_request_template.md")
    for asked in ("Lesson", "Profile", "Device"):
        assert f"**{asked}" in text, f"the PR template does not ask for {asked}"
    checklist = re.findall(r"^- \[ \] (.+)$", text, re.M)
    assert any("`bash tools/test`" in item for item in checklist)
    assert any("nbstripout" in item for item in checklist)
    assert any("glue" in item for item in checklist)


def test_credits_name_every_registered_dataset_and_the_source_articles():
    text = read("book/credits.md")
    for folder in sorted({key.split("/", 1)[0] for key in REGISTRY}):
        assert f"`{folder}/`" in text, f"book/credits.md does not credit the dataset in {folder}/"
    for entry in REGISTRY.values():
        assert _licence_name(entry) in text, f"book/credits.md lacks {entry.key}'s licence"
    assert re.findall(r"^\*\*(\d)\. ", text, re.M) == ["1", "2", "3", "4", "5"], "the five source articles"
    assert "CC BY-SA 4.0" in text and "MIT" in text
    toc = yaml.safe_load(read("book/_toc.yml"))
    reference = [f["file"] for part in toc["parts"] if not part.get("numbered") for f in part["chapters"]]
    assert "book/credits" in reference, "book/credits.md must be in the table of contents"


def test_readme_layout_names_the_adoption_files_and_they_exist():
    layout = read("README.md").split("## Layout", 1)[1]
    for rel in ("LICENSE", "LICENSE-CONTENT.md", "CITATION.cff", "CHANGELOG.md", ".github/", "Dockerfile"):
        assert f"`{rel}`" in layout, f"README's Layout does not mention {rel}"
        assert (ROOT / rel).exists(), f"README names {rel}, which does not exist"


# --- the locked environment ---------------------------------------------------------------------


def lock_pins(text: str | None = None) -> dict[str, str]:
    text = read("requirements.lock") if text is None else text
    return {m.group(1).lower().replace("_", "-"): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def test_every_installer_installs_the_lock():
    assert "-r requirements.lock" in read("environment.yml")
    assert "-r requirements.lock" in read("tools/env.sh")
    assert "pip install -r requirements.lock" in read("Dockerfile")
    assert "bash tools/lock" in read("README.md"), "the README says how to update the lock"


def test_lock_holds_the_direct_pins_and_the_stacks_that_used_to_float():
    pins, lock = requirement_pins(), lock_pins()
    for name, version in pins.items():
        assert lock.get(name.replace("_", "-")) == version, f"requirements.txt pins {name}=={version}, the lock {lock.get(name)}"
    for floating in ("sphinx", "myst-nb", "jupyter-client", "nbconvert", "notebook", "pydata-sphinx-theme", "alembic"):
        assert floating in lock, f"{floating} is not locked"
    assert len(lock) > 2 * len(pins)


def test_the_environment_is_the_lock():
    """tools/env.sh installed exactly the lock (a package at another version means a stale .venv or
    a lock that was edited by hand)."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name, pinned in lock_pins().items():
        try:
            installed = version(name).split("+")[0]  # torch 2.14.1+cu130 is the pin 2.14.1
        except PackageNotFoundError:
            wrong.append(f"{name} not installed")
            continue
        if installed != pinned.split("+")[0]:
            wrong.append(f"{name} {installed} != {pinned}")
    assert not wrong, wrong


@pytest.mark.slow  # resolves with uv (a few seconds)
def test_lock_check_passes_and_rejects_a_lock_that_contradicts_requirements(tmp_path):
    venv = {"DLBOOK_VENV": str(Path(sys.executable).parents[1])}
    ok = subprocess.run(["bash", str(ROOT / "tools" / "lock"), "--check"], capture_output=True, text=True,
                        env={**os.environ, **venv})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the same check in a copy whose lock pins another tqdm than requirements.txt
    (tmp_path / "tools").mkdir()
    for name in ("tools/lock", "tools/uv-args.sh", "requirements.txt", "pyproject.toml", "README.md"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    tqdm = lock_pins()["tqdm"]
    lock = read("requirements.lock").replace(f"\ntqdm=={tqdm}\n", "\ntqdm==4.66.0\n")
    assert lock != read("requirements.lock")
    (tmp_path / "requirements.lock").write_text(lock, encoding="utf-8")
    bad = subprocess.run(["bash", str(tmp_path / "tools" / "lock"), "--check"], capture_output=True, text=True,
                         env={**os.environ, **venv})
    assert bad.returncode == 1 and "run bash tools/lock" in bad.stderr, bad.stdout + bad.stderr
    assert (tmp_path / "requirements.lock").read_text(encoding="utf-8") == lock, "--check must not rewrite the lock"
