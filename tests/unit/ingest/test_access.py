"""Access resolution: the nearest sidecar with a match grants, first matching entry wins, defaults fill in, nothing
resolvable is skipped (never public unless allowPublic); a document's own metadata only narrows the grant (same
tenant, a subset of its groups) and an attempt to widen it is an error (the document is skipped and reported)."""

import pytest

from agentfleet.ingest.access import AccessError, AccessRule, glob_match, parse_sidecar, resolve_access

SIDECARS = {
    "": [AccessRule("security-*.md", "acme", ("eng",)), AccessRule("*.md", "acme", ("all",))],
    "finance": [AccessRule("q*.md", "acme", ("finance",)), AccessRule("*.md", None, ("finance-ro",))],
    "finance/deep": [AccessRule("only-this.md", "other", ("x",))],
    "ops": [AccessRule("reports/**", "acme", ("ops",))],
    "team": [AccessRule("*", "acme", ("eng", "sre"))],
    "wide": [AccessRule("*", "acme", None)],
}

CASES = [
    # id, path, front matter, defaults (tenant, groups, public), want (tenant, groups, public, origin) or None
    ("front-matter-cannot-change-tenant", "security-a.md", {"tenant": "globex", "groups": ["hr"]}, (None, (), False),
     AccessError),
    ("front-matter-cannot-widen-groups", "security-a.md", {"groups": ["hr"]}, (None, (), False), AccessError),
    ("front-matter-narrows-groups", "team/a.md", {"groups": ["sre"]}, (None, (), False),
     ("acme", ("sre",), False, "front matter")),
    ("front-matter-subset-same-tenant", "team/a.md", {"tenant": "acme", "groups": ["eng", "sre"]}, (None, (), False),
     ("acme", ("eng", "sre"), False, "front matter")),
    ("front-matter-empty-groups-widen-to-tenant", "team/a.md", {"groups": []}, (None, (), False), AccessError),
    ("front-matter-narrows-tenant-wide-grant", "wide/a.md", {"groups": ["eng"]}, (None, (), False),
     ("acme", ("eng",), False, "front matter")),
    ("front-matter-cannot-leave-defaults-tenant", "ops/readme.txt", {"tenant": "globex"}, ("acme", (), False),
     AccessError),
    ("front-matter-narrows-defaults", "ops/readme.txt", {"groups": ["eng"]}, ("acme", (), False),
     ("acme", ("eng",), False, "front matter")),
    ("self-described-where-nothing-grants", "ops/readme.txt", {"tenant": "globex", "groups": ["hr"]},
     (None, (), False), ("globex", ("hr",), False, "front matter")),
    ("rule-without-tenant-bounds-groups", "finance/notes.md", {"tenant": "acme", "groups": ["x"]}, (None, (), False),
     AccessError),
    ("sidecar-first-match", "security-a.md", {}, (None, (), False), ("acme", ("eng",), False, "_access.yaml")),
    ("sidecar-later-entry", "faq.md", None, (None, (), False), ("acme", ("all",), False, "_access.yaml")),
    ("nearest-dir-wins", "finance/q3.md", {}, (None, (), False),
     ("acme", ("finance",), False, "finance/_access.yaml")),
    ("no-slash-pattern-matches-any-depth", "finance/deep/q4.md", {}, (None, (), False),
     ("acme", ("finance",), False, "finance/_access.yaml")),
    ("nearest-with-a-match", "finance/deep/only-this.md", {}, (None, (), False),
     ("other", ("x",), False, "finance/deep/_access.yaml")),
    ("rule-without-tenant-uses-defaults", "finance/notes.md", {}, ("acme", ("d",), False),
     ("acme", ("finance-ro",), False, "finance/_access.yaml")),
    ("rule-without-tenant-no-defaults-skips", "finance/notes.md", {}, (None, (), False), None),
    ("doublestar", "ops/reports/2024/x.txt", {}, (None, (), False), ("acme", ("ops",), False, "ops/_access.yaml")),
    ("no-match-defaults", "ops/readme.txt", {}, ("acme", ("all",), False), ("acme", ("all",), False, "defaults")),
    ("no-match-no-defaults-skipped", "ops/readme.txt", {}, (None, (), False), None),
    ("no-match-public", "ops/readme.txt", {}, (None, (), True), (None, (), True, "public default")),
    ("defaults-beat-public", "ops/readme.txt", {}, ("acme", (), True), ("acme", (), False, "defaults")),
    ("front-groups-outside-grant", "faq.md", {"groups": ["hr"]}, (None, (), False), AccessError),
    ("front-tenant-other-than-grant", "faq.md", {"tenant": "globex"}, (None, (), False), AccessError),
    ("front-tenant-same-keeps-grant", "faq.md", {"tenant": "acme"}, (None, (), False),
     ("acme", ("all",), False, "_access.yaml")),
    ("groups-only-never-public", "ops/x.txt", {"groups": ["a"]}, (None, (), True), None),
    ("hostile-names-kept-verbatim", "x.txt", {"tenant": 'a" or 1==1', "groups": ["%_|", "]"]}, (None, (), False),
     ('a" or 1==1', ("%_|", "]"), False, "front matter")),
]


@pytest.mark.parametrize("path,front,defaults,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_access(path, front, defaults, want):
    if want is AccessError:
        with pytest.raises(AccessError):
            resolve_access(path, front, SIDECARS, default_tenant=defaults[0], default_groups=defaults[1],
                           allow_public=defaults[2])
        return
    got = resolve_access(path, front, SIDECARS, default_tenant=defaults[0], default_groups=defaults[1],
                         allow_public=defaults[2])
    if want is None:
        assert got is None
    else:
        assert (got.tenant, got.groups, got.public, got.origin) == want


@pytest.mark.parametrize("front", [{"tenant": 2024}, {"tenant": "a", "groups": [1]}, {"groups": {"a": 1}}],
                         ids=["tenant-int", "group-int", "groups-map"])
def test_malformed_front_matter_is_an_error(front):
    with pytest.raises(AccessError):
        resolve_access("x.md", front, {})


@pytest.mark.parametrize("data,ok", [
    ([{"pattern": "*.md", "tenant": "a", "groups": ["b"]}], True),
    ([{"pattern": "*.md", "tenant": "a", "groups": "b"}], True),
    (None, True),
    ({"pattern": "*.md"}, False),
    ([{"tenant": "a"}], False),
    ([{"pattern": "*.md", "tenant": ["a"]}], False),
], ids=["list", "one-group-string", "empty", "not-a-list", "no-pattern", "tenant-list"])
def test_parse_sidecar(data, ok):
    if ok:
        parse_sidecar(data, "_access.yaml")
    else:
        with pytest.raises(AccessError):
            parse_sidecar(data, "_access.yaml")


@pytest.mark.parametrize("pattern,path,want", [
    ("*.md", "a.md", True), ("*.md", "d/a.md", True), ("d/*.md", "d/a.md", True), ("d/*.md", "d/e/a.md", False),
    ("d/**", "d/e/a.md", True), ("**/a.md", "a.md", True), ("a?.md", "ab.md", True), ("[x].md", "x.md", False),
    ("./a.md", "a.md", True),
    # A pattern cannot reach above its sidecar's directory: paths it is matched against never contain `..`.
    ("../a.md", "a.md", False), ("**/../*.md", "d/a.md", False),
], ids=lambda v: str(v))
def test_glob_match(pattern, path, want):
    assert glob_match(pattern, path) is want
